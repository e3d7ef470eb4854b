"""Network architectures. Every class here can be named by `model.net._target_`."""

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """The seed article's CNN, layer for layer and with the same parameter names.

    Same state_dict keys as the seed script, so weights move between the two; `flatten(1)` instead of the
    seed's hard-coded view so any batch shape works. Same function too: ReLU never lowers a larger value below a
    smaller one, so max-pooling then ReLU equals the seed's ReLU then max-pooling, outputs and gradients alike
    (tests/test_net.py), and costs the ReLU a quarter of the elements: a training step 1.14-1.16x as fast on
    two CPU cores (benchmarks/RESULTS.md, 13).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.pool(self.conv1(x)))
        x = self.relu(self.pool(self.conv2(x)))
        return self.fc1(x.flatten(1))


def _conv_bn_relu(c_in: int, c_out: int, padding: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class BNCNN(nn.Module):
    """A deeper CNN with batch norm, for `experiment=best`: two 3x3 conv blocks at 28x28 and at 14x14, one at 7x7.

    Narrow enough that an epoch (55k images, bf16) trains in about half a minute on two CPU cores; the dense
    head over the 5x5 map keeps where features are (global pooling loses it and costs accuracy on digits).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (16, 32, 48, 64, 128),
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths needs 5 channel counts (2 at 28x28, 2 at 14x14, 1 at 7x7), got {list(widths)}")
        w = list(widths)
        self.features = nn.Sequential(
            *_conv_bn_relu(1, w[0]),
            *_conv_bn_relu(w[0], w[1]),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w[1], w[2]),
            *_conv_bn_relu(w[2], w[3]),
            nn.MaxPool2d(2),
            *_conv_bn_relu(w[3], w[4], padding=0),  # 7x7 -> 5x5
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(w[4] * 5 * 5, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
