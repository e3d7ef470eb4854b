"""Memory management of the entry points: glibc malloc tuning (`keep_freed_memory`, on by default in
conf/train.yaml) and Python's cyclic garbage collector paused while the libraries import (`gc_paused`; a
sweep's own process ends the pause in config/sweep.py)."""

from __future__ import annotations

import ctypes
import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_paused = False  # whether `gc_paused` turned the collector off and `end_gc_pause` has not yet turned it on


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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run an entry point with the cyclic garbage collector off until `end_gc_pause()` (or the block's end).

    Importing torch, Lightning, torchmetrics and Hydra makes ~390k objects that live as long as the process, and
    each full collection the collector starts on the way walks all of them again: 6 of them, ~0.6 s of a ~3 s
    start-up (benchmarks/RESULTS.md section 12). Leaving the block turns the collector back on whatever happened
    (an error line, an interrupt); a caller that had it off already keeps it off.

    Example:
        with gc_paused():
            hydra_main()  # the task calls end_gc_pause() once its imports are done
    """
    global _paused
    if not gc.isenabled():
        yield
        return
    gc.disable()
    _paused = True
    try:
        yield
    finally:
        if _paused:
            _paused = False
            gc.enable()


def end_gc_pause() -> None:
    """End `gc_paused`'s pause: freeze what start-up made (later collections skip it), then collect as usual.

    A no-op outside `gc_paused` and after the first call, so a multirun's later jobs and tests that call
    `train(cfg)` keep the collector as it was. An entry point called again in one process (a debugger, a
    notebook) pauses and freezes again, keeping the earlier run's unreachable cycles: the commands are meant
    to be run once per process.

    Note:
        Start-up's own cyclic garbage (~26k objects, ~10 MB: parsed configs, import leftovers) is frozen with the
        rest and stays until the process ends: once per process, never per job. Collecting it first would walk
        every object once more (0.33-0.39 s measured), half of what the pause saves.
    """
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
