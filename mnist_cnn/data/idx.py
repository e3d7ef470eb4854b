"""MNIST's IDX files: checked and read once per process, into uint8 arrays.

Each check names the file and the problem in one line (`UserError`), so training never starts on partial or
mismatched data (torchvision's parser trusts the header: a truncated file becomes a reshape traceback, a
wrong magic number or a labels file one short is parsed anyway). `read_split` keeps what it read, keyed by
the files' identity, so the pre-run check (mnist_cnn/config/validate.py) and the DataModule share one read.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from mnist_cnn.core.errors import UserError
from mnist_cnn.core.io import may

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


def check_layout(data_dir: str | Path, key: str = "data.data_dir") -> None:
    """The four files one level off (the user gave MNIST/raw itself, MNIST/, or a folder above): say what to give.

    Otherwise the download would create MNIST/raw/MNIST/raw inside the user's folder and fail offline.
    """
    given = Path(data_dir).expanduser()
    if not missing_files(given):
        return
    has_all = lambda folder: all((folder / name).is_file() for name in ALL_FILES)  # noqa: E731
    if has_all(given):
        right = given.parent.parent if given.parts[-2:] == ("MNIST", "raw") else None
        fix = f"give {key}={right}" if right else f"move them into {raw_folder(given)}/"
        raise UserError(f"{key}={given} holds the MNIST files itself; {fix} (the folder that holds MNIST/raw/)")
    if has_all(given / "raw"):
        right = given.parent if given.name == "MNIST" else None
        fix = f"give {key}={right}" if right else f"move them into {raw_folder(given)}/"
        raise UserError(f"{key}={given} holds raw/ with the MNIST files; {fix} (the folder that holds MNIST/raw/)")
    subfolders = sorted(d for d in given.iterdir() if d.is_dir()) if given.is_dir() else []
    below = [d for d in subfolders if has_all(raw_folder(d))]
    if below:
        raise UserError(
            f"{key}={given} has no MNIST/raw/, but {raw_folder(below[0])} has the files: give {key}={below[0]}"
        )


def check_readable_folder(path: Path, key: str = "data.data_dir") -> None:
    """A folder we cannot list or enter: say so, instead of torchvision calling it 'not found'."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={path} is a file, not a folder (it should hold MNIST/raw/)")
    for folder in (path, path / "MNIST", path / "MNIST" / "raw"):
        if folder.is_dir() and not may(folder, os.R_OK | os.X_OK):
            raise UserError(f"cannot read the folder {folder}: permission denied (needs read and execute)")


def _parse(path: Path, kind: str) -> np.ndarray:
    """The file's items as uint8 (N, 28, 28) or (N,), after checking magic, shape and that the size is exact."""
    if not path.is_file():
        raise UserError(f"{path} is missing" if not path.exists() else f"{path} is not a file")
    if not may(path, os.R_OK):
        raise UserError(f"cannot read {path}: permission denied")
    ndim = 3 if kind == "images" else 1
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    head, size = data[: 4 + 4 * ndim], len(data)
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
    return np.frombuffer(data, dtype=np.uint8, offset=len(head)).reshape(n, *shape)


_READ: dict[tuple[str, str], tuple[tuple[int, ...], tuple[np.ndarray, np.ndarray]]] = {}


def read_split(data_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of a split, both uint8 and read-only, every check passed.

    A label byte outside 0-9 would otherwise surface as a CUDA assert or as a silently wrong class. A second
    call for unchanged files (same inode, size, mtime) returns the first call's arrays.
    """
    raw = raw_folder(data_dir)
    paths = [raw / name for name in FILES[split]]
    key = (str(raw.resolve()), split)
    try:
        stamp = tuple(v for p in paths for st in [p.stat()] for v in (st.st_ino, st.st_size, st.st_mtime_ns))
    except OSError:
        stamp = ()  # missing or unreadable: _parse says which, in one line
    if stamp and key in _READ and _READ[key][0] == stamp:
        return _READ[key][1]
    images, labels = _parse(paths[0], "images"), _parse(paths[1], "labels")
    if len(images) != len(labels):
        raise UserError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    if labels.max() > 9:
        i = int(np.argmax(labels > 9))
        raise UserError(f"{paths[1]}: label {labels[i]} at index {i} is not a digit 0-9")
    _READ[key] = (stamp, (images, labels))
    return images, labels
