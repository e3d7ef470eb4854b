"""Fault injection for tests, named by `_target_` in overrides (`+callbacks.crash=...`)."""

from typing import Any

import lightning.pytorch as pl


class CrashOnRank(pl.Callback):
    """Raise in one rank mid-epoch, as a bug or a dying worker would."""

    def __init__(self, rank: int, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise RuntimeError(f"injected crash in rank {self.rank}")
