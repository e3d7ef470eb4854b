"""Test-only callbacks named by `_target_` in overrides (`+callbacks.crash=...`; tests/ on PYTHONPATH)."""

import os
import signal
from typing import Any

import lightning.pytorch as pl


class CrashOnRank(pl.Callback):
    """Raise in one rank mid-epoch, as a bug or a dying worker would."""

    def __init__(self, rank: int, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise RuntimeError(f"injected crash in rank {self.rank}")


class SignalAtStep(pl.Callback):
    """Send this process `signal` once training reaches `step` (not again after a resume from that step), as
    SLURM or submitit's local controller would send it before a time limit."""

    def __init__(self, step: int, signal: str = "SIGUSR2") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class RecordCounts(pl.Callback):
    """After testing, write this rank's TestDashboards confusion matrix (`counts`) to `folder`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import json
        from pathlib import Path

        from mnist_cnn.callbacks.dashboards import TestDashboards

        (dashboards,) = [c for c in trainer.callbacks if isinstance(c, TestDashboards)]  # type: ignore[attr-defined]
        Path(self.folder, f"counts_rank{trainer.global_rank}.json").write_text(json.dumps(dashboards.counts.tolist()))
