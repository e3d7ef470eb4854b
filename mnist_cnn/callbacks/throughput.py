"""`perf/train_images_per_s`, the training throughput of each epoch; and the malloc setting that raises it."""

from __future__ import annotations

import ctypes
import sys
import time
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override


class Throughput(pl.Callback):
    """Training images per second over each epoch's training batches, all ranks together (validation excluded).

    Note:
        Lightning's `ThroughputMonitor` logs a moving window to the loggers only (not to `callback_metrics`, which
        metrics.json is made of) and synchronises the GPU after every step.
    """

    def __init__(self) -> None:
        self.images, self.started, self.elapsed = 0, 0.0, 0.0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.images, self.started = 0, time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.images += len(args[1][1]) * trainer.world_size  # args: outputs, batch (images, labels), batch_idx
        self.elapsed = time.perf_counter() - self.started

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.images:
            pl_module.log("perf/train_images_per_s", self.images / self.elapsed)


class KeepFreedMemory(pl.Callback):
    """glibc's malloc with fixed thresholds: freed blocks are reused, not unmapped and re-faulted page by page every
    step. `experiment=fast` 7,100-7,800 -> 11,300-11,500 img/s on an Intel Xeon (benchmarks/RESULTS.md, 14)."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if sys.platform.startswith("linux") else None
        if mallopt is not None:  # M_MMAP_THRESHOLD 32 MB, M_TRIM_THRESHOLD 512 MB (malloc.h)
            mallopt(-3, 32 << 20), mallopt(-1, 512 << 20)
