import torch
from torch import nn

from mnist_cnn.models.nets import SimpleCNN


def test_output_shape_for_any_batch() -> None:
    net = SimpleCNN()
    for n in (1, 7, 64):
        assert net(torch.randn(n, 1, 28, 28)).shape == (n, 10)


def test_exactly_the_seed_architecture() -> None:
    net = SimpleCNN()
    # conv1 32*(1*9)+32, conv2 64*(32*9)+64, fc1 10*3136+10
    assert sum(p.numel() for p in net.parameters()) == 320 + 18_496 + 31_370 == 50_186
    assert [type(m) for m in net.children()] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.Linear]
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size, net.conv1.padding) == (
        1,
        32,
        (3, 3),
        (1, 1),
    )
    assert (net.conv2.in_channels, net.conv2.out_channels, net.conv2.kernel_size, net.conv2.padding) == (
        32,
        64,
        (3, 3),
        (1, 1),
    )
    assert (net.pool.kernel_size, net.pool.stride) == (2, 2)
    assert (net.fc1.in_features, net.fc1.out_features) == (64 * 7 * 7, 10)
    # Same parameter names as the seed script, so weights move between the two.
    assert list(net.state_dict()) == [f"{m}.{p}" for m in ("conv1", "conv2", "fc1") for p in ("weight", "bias")]
