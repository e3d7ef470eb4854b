"""Start-up and training throughput of a run, as a callback: `perf/startup_s` and `perf/train_images_per_s`."""

from __future__ import annotations

import os
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


def process_age() -> float:
    """Seconds since this process started, from the kernel's own record (Linux); 0.0 where there is none."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, after the name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Throughput(Callback):
    """Log `perf/startup_s` (start -> first training batch) and `perf/train_images_per_s` (each epoch).

    Start-up counts from the process's start (imports included) for the first run of a process, and from
    this callback's construction for later ones: the later jobs of an in-process multirun skip the imports
    (counting those from the process's start reported 834 s for a 1 s start-up).

    Note:
        Images per second count every rank's images (x world size) over the training batches only: the
        validation pass at the end of an epoch is not training time.
    """

    _runs_in_process = 0  # class-wide on purpose: how many runs this process has started before this one

    def __init__(self) -> None:
        first = Throughput._runs_in_process == 0
        Throughput._runs_in_process += 1
        self.started = time.perf_counter() - (process_age() if first else 0.0)
        self.startup_s: float | None = None
        self._epoch_start = self._train_seconds = 0.0
        self._images = 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._images, self._train_seconds = time.perf_counter(), 0, 0.0
        if self.startup_s is None:
            self.startup_s = self._epoch_start - self.started

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        batch = args[1]  # outputs, batch, batch_idx
        self._images += len(batch[1])
        self._train_seconds = time.perf_counter() - self._epoch_start

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._train_seconds > 0:
            pl_module.log("perf/train_images_per_s", self._images * trainer.world_size / self._train_seconds)
