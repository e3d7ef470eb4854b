"""Parts a fork brings from outside the package, named by `_target_` alone (tests/test_fork.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


class SignSGD(torch.optim.Optimizer):
    """An optimizer that is not in torch.optim: each step moves every weight by lr against its gradient's sign."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3) -> None:
        if lr <= 0:
            raise ValueError(f"Invalid learning rate: {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss


class TinyNet(nn.Module):
    """A net that is not in mnist_cnn.models.nets: one conv, global pooling, a linear head for any image size."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
