"""mnist-cnn: the seed article's MNIST CNN as Lightning + Hydra experiment code.

Kept import-light on purpose: console scripts import this before deciding what else they need.
"""

import time
from pathlib import Path

STARTED = time.perf_counter()  # process start, near enough: `train.py` imports this first (see startup_s)

_PKG = Path(__file__).resolve().parent
# A wheel ships the configs inside the package; a source checkout (editable install) has them beside it.
CONFIG_DIR = str(_PKG / "conf" if (_PKG / "conf").is_dir() else _PKG.parent / "conf")


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class UserError(Exception):
    """A problem the user can fix (bad config, missing data): reported as one line, no traceback."""


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc's malloc reuse freed blocks instead of handing them back to the OS after every step.

    By default glibc maps big blocks fresh and trims the heap top, with thresholds that adapt to the order of
    past frees; a training process that lands badly re-faults each step's activation buffers page by page
    (2-4M page faults instead of ~0.7M in an epoch of the default run, ~1.5x slower). Fixed thresholds stop
    that. False where the C library is not glibc (nothing to tune).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library: no ldconfig lookup at start-up
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))
