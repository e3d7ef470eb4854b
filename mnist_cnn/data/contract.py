"""The input contract: what every model of this project takes, and the one place it is turned into floats.

A model takes uint8 pixels, shape (N, 1, 28, 28), white ink on black (MNIST's own files, and what
`mnist_cnn.infer.preprocess` makes of a photo). `normalize` is applied inside the model's forward, so
training, torch inference, the ONNX export (whose graph then holds it) and the dashboards all see the same
uint8 images and nobody needs these constants.
"""

from __future__ import annotations

import torch
from torch import Tensor

MEAN, STD = 0.1307, 0.3081  # the seed article's Normalize((0.1307,), (0.3081,))


def normalize(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float, the same numbers as the seed's ToTensor() + Normalize(MEAN, STD)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels (N, 1, 28, 28), white ink on black; got {images.dtype}")
    return images.float().div_(255).sub_(MEAN).div_(STD)
