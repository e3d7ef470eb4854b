import pytest
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


def seed_forward(net: SimpleCNN, x: torch.Tensor) -> torch.Tensor:
    """The seed script's forward, word for word: ReLU, then max-pool."""
    x = net.pool(net.relu(net.conv1(x)))
    x = net.pool(net.relu(net.conv2(x)))
    return net.fc1(x.reshape(x.size(0), -1))


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_same_function_and_gradients_as_the_seed_order(bf16: bool, layout: torch.memory_format) -> None:
    """Pooling before the ReLU is an optimisation, not a new model: every output and every gradient is bit for bit
    the seed order's, ties in a pooling window included: on a blank background, as around every MNIST digit, every
    window of the first conv's output is a tie (positive or not, by the bias)."""
    torch.manual_seed(0)
    net = SimpleCNN().to(memory_format=layout)
    blank_with_strokes = torch.zeros(8, 1, 28, 28)
    blank_with_strokes[:, :, 8:20, 12:16] = torch.rand(8, 1, 12, 4)
    x = torch.cat([torch.randn(8, 1, 28, 28), blank_with_strokes])
    x = x.contiguous(memory_format=layout)
    target = torch.randint(0, 10, (16,))
    results = []
    for forward in (net, lambda t: seed_forward(net, t)):
        net.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x)
        nn.functional.cross_entropy(out.float(), target).backward()
        results.append([out.detach().clone(), *(p.grad.clone() for p in net.parameters())])  # type: ignore[union-attr]
    for ours, seed in zip(*results, strict=True):
        assert torch.equal(ours, seed)
