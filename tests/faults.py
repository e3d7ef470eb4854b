"""Fault injection for tests, named by `_target_` in overrides (`+callbacks.crash=...`)."""

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
