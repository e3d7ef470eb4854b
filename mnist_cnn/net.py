"""Network architectures. Every class here can be named by `model.net._target_`."""

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """The seed article's CNN, layer for layer and with the same parameter names.

    Same state_dict keys as the seed script, so weights move between the two; `flatten(1)` instead of the
    seed's hard-coded view so any batch shape works.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc1(x.flatten(1))
