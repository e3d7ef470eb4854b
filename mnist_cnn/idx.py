"""MNIST's IDX files, checked before torchvision parses them.

torchvision trusts the header: a truncated file becomes a reshape traceback, a file with a wrong magic number
or a labels file one short is parsed anyway. Each check here names the file and the problem in one line
(`UserError`), so training never starts on partial or mismatched data.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from mnist_cnn import UserError

# Magic numbers: 0x00 0x00, type 0x08 (unsigned byte), number of dimensions (3 for images, 1 for labels).
MAGIC = {"images": 0x00000803, "labels": 0x00000801}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = tuple(name for pair in FILES.values() for name in pair)
SIDE = 28


def raw_folder(data_dir: str | Path) -> Path:
    """Where torchvision keeps MNIST under `data.data_dir`."""
    return Path(data_dir).expanduser() / "MNIST" / "raw"


def missing_files(data_dir: str | Path) -> list[str]:
    """The raw (extracted) files not there, in MNIST's own order; torchvision extracts a downloaded .gz."""
    raw = raw_folder(data_dir)
    return [name for name in ALL_FILES if not (raw / name).exists()]


def may(path: str | Path, mode: int) -> bool:
    """Whether this process may access `path` as `open` would decide (effective ids, capabilities)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def check_readable_folder(path: Path, key: str = "data.data_dir") -> None:
    """A folder we cannot list or enter: say so, instead of torchvision calling it 'not found'."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={path} is a file, not a folder (it should hold MNIST/raw/)")
    for folder in (path, path / "MNIST", path / "MNIST" / "raw"):
        if folder.is_dir() and not may(folder, os.R_OK | os.X_OK):
            raise UserError(f"cannot read the folder {folder}: permission denied (needs read and execute)")


def _count(path: Path, kind: str) -> int:
    """Number of items the header declares, after checking magic, shape and that the size matches exactly."""
    if not path.is_file():
        raise UserError(f"{path} is missing" if not path.exists() else f"{path} is not a file")
    if not may(path, os.R_OK):
        raise UserError(f"cannot read {path}: permission denied")
    ndim = 3 if kind == "images" else 1
    try:
        with path.open("rb") as f:
            head = f.read(4 + 4 * ndim)
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    if len(head) >= 4 and (magic := struct.unpack(">I", head[:4])[0]) != MAGIC[kind]:
        gzipped = " (it is gzip-compressed: gunzip it)" if head[:2] == b"\x1f\x8b" else ""
        raise UserError(
            f"{path}: wrong magic number 0x{magic:08x}; an MNIST {kind} file starts with 0x{MAGIC[kind]:08x}{gzipped}"
        )
    if len(head) < 4 + 4 * ndim:
        raise UserError(f"{path}: truncated: {size} bytes is too short for the IDX header")
    n, *shape = struct.unpack(f">{ndim}I", head[4:])
    if kind == "images" and shape != [SIDE, SIDE]:
        raise UserError(f"{path}: images are {shape[0]}x{shape[1]} pixels, MNIST's are {SIDE}x{SIDE}")
    expected = len(head) + n * (SIDE * SIDE if kind == "images" else 1)
    if size < expected:
        raise UserError(
            f"{path}: truncated: the header declares {n} {kind} ({expected} bytes) but the file has {size} bytes"
        )
    if size > expected:
        raise UserError(f"{path}: {size - expected} bytes of unexpected data after the {n} {kind} its header declares")
    if n == 0:
        raise UserError(f"{path}: holds no {kind}")
    return int(n)


def check_split(data_dir: str | Path, split: str) -> int:
    """Both files of a split are well-formed and agree on the count, every label is a digit; returns the count.

    A label byte outside 0-9 would otherwise surface as a CUDA assert or as a silently wrong class.
    """
    raw = raw_folder(data_dir)
    images, labels = (raw / name for name in FILES[split])
    n_images, n_labels = _count(images, "images"), _count(labels, "labels")
    if n_images != n_labels:
        raise UserError(f"{images} has {n_images} images but {labels} has {n_labels} labels")
    values = labels.read_bytes()[8:]
    if max(values) > 9:
        i = next(i for i, v in enumerate(values) if v > 9)
        raise UserError(f"{labels}: label {values[i]} at index {i} is not a digit 0-9")
    return n_images
