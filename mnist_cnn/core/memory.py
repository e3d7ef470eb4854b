"""glibc malloc tuning for training processes (`keep_freed_memory`, on by default in conf/train.yaml)."""

from __future__ import annotations

import ctypes
import sys


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc's malloc reuse freed blocks instead of handing them back to the OS after every step.

    By default glibc maps big blocks fresh and trims the heap top, with thresholds that adapt to the order of
    past frees; a training process that lands badly re-faults each step's activation buffers page by page
    (benchmarks/RESULTS.md). Fixed thresholds stop that. False where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library: no ldconfig lookup at start-up
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))
