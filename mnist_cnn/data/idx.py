"""IDX files (MNIST's format) checked and read into uint8 arrays; every problem is one line naming the file.

torchvision's parser trusts the header: a truncated file becomes a reshape traceback, and a wrong magic number or a
labels file one short is parsed anyway.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mnist_cnn.cli import UserError

MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # 0x00 0x00, type 0x08 (unsigned byte), number of dimensions


def read_idx(path: Path, kind: str) -> np.ndarray:
    """`kind` "images" (N, H, W) or "labels" (N,), uint8, after checking the magic number and the exact size."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: {err.strerror or err}") from None
    ndim = 3 if kind == "images" else 1
    head = data[: 4 + 4 * ndim]
    if len(head) >= 4 and (magic := struct.unpack(">I", head[:4])[0]) != MAGIC[kind]:
        gzipped = " (it is gzip-compressed: gunzip it)" if head[:2] == b"\x1f\x8b" else ""
        raise UserError(
            f"{path}: wrong magic number 0x{magic:08x}; an IDX {kind} file starts with 0x{MAGIC[kind]:08x}{gzipped}"
        )
    if len(head) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated: {len(data)} bytes is too short for the IDX header")
    n, *shape = struct.unpack(f">{ndim}I", head[4:])
    expected = len(head) + n * int(np.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "unexpected data after the end"
        raise UserError(f"{path}: {what}: its header declares {n} {kind} ({expected} bytes), the file has {len(data)}")
    if n == 0:
        raise UserError(f"{path}: holds no {kind}")
    return np.frombuffer(data, dtype=np.uint8, offset=len(head)).reshape(n, *shape)


def read_split(raw: Path, images: str, labels: str, num_classes: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One split's images (N, size, size) and labels (N,), checked against each other and `num_classes`."""
    x, y = read_idx(raw / images, "images"), read_idx(raw / labels, "labels")
    if x.shape[1:] != (size, size):
        raise UserError(f"{raw / images}: images are {x.shape[1]}x{x.shape[2]} pixels; the net takes {size}x{size}")
    if len(x) != len(y):
        raise UserError(f"{raw / images} has {len(x)} images but {raw / labels} has {len(y)} labels")
    if y.max() >= num_classes:
        i = int(np.argmax(y >= num_classes))
        raise UserError(f"{raw / labels}: label {y[i]} at index {i} is not a class 0-{num_classes - 1}")
    return x, y
