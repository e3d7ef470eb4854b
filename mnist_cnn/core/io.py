"""The one atomic writer: every file a run leaves (JSON, summaries, PNGs, checkpoints) goes through `atomic_write`."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, data: str | bytes | Callable[[IO[bytes]], object]) -> None:
    """Write `data` (text, bytes, or a function writing to a binary file) to a temp file, fsync, rename.

    A reader, or a crash, never sees half a file: the old file (if any) stays until the new one is complete.
    The temp file sits in the same folder (so the rename is atomic) and carries the pid (parallel writers).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not possible on every filesystem
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def may(path: str | Path, mode: int) -> bool:
    """Whether this process may access `path` as `open` would decide (effective ids, capabilities)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def write_json(path: str | Path, obj: object) -> None:
    """`obj` as indented JSON (values JSON lacks, such as paths, as strings), written atomically."""
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")
