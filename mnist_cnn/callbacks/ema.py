"""EMA of the weights for `experiment=best`: Lightning's `EMAWeightAveraging` with a warm-up and a test fix."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from typing_extensions import override


class EMA(EMAWeightAveraging):
    """Exponential moving average of the weights and buffers, validated, checkpointed and tested in their place.

    Args:
        decay: the decay once warmed up; after n updates it is min(decay, (1 + n) / (10 + n)), timm's warm-up.
            A fixed 0.998 still carries ~40% of the barely trained first steps' weights after an epoch of MNIST.

    Note:
        Outside fit the checkpoint's `state_dict` (the average) is used as loaded: Lightning's callback, still
        holding its average when the same trainer tests `ckpt_path=best`, would load the raw weights instead.
    """

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        self.decay = decay
        self._kwargs["avg_fn"] = self._warm_ema  # the AveragedModel Lightning builds, with a decay that warms up

    def _warm_ema(self, averaged: Tensor, current: Tensor, n_averaged: Tensor) -> Tensor:
        decay = torch.clamp((1.0 + n_averaged) / (10.0 + n_averaged), max=self.decay)  # on the device: no sync
        return averaged + (current - averaged) * (1.0 - decay)

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: both the raw and the averaged weights come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
