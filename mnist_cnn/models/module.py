"""The LightningModule: normalisation, loss, metrics and optimisation around any net (`model.net._target_`)."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_cnn.data.augment import random_affine

MEAN, STD = 0.1307, 0.3081  # the seed article's Normalize((0.1307,), (0.3081,))


def normalize(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float, the same numbers as the seed's ToTensor() + Normalize(MEAN, STD)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels (N, C, H, W), white ink on black; got {images.dtype}")
    return images.float().div_(255).sub_(MEAN).div_(STD)


class MNISTClassifier(pl.LightningModule):
    """Classifies uint8 images (N, 1, 28, 28), white ink on black, with the net `net` describes.

    Args:
        num_classes: classes the data holds (the data module says; train.py passes it to the net too).
        net: a `_target_` config of the net, kept as a plain dict so the checkpoint rebuilds it.
        optimizer: a `_partial_` config of the optimizer (any class taking `params`), built once here so a bad
            setting is refused before training.
        scheduler: a `_partial_` config of an LR scheduler, stepped every optimizer step; `total_steps` / `T_max`
            come from the trainer when left out.
        compile: `torch.compile` the net (the net alone: a compiled module breaks `self.log`). Pays on GPUs.
        channels_last: NHWC layout, what oneDNN (CPU) and cuDNN (tensor cores) run convolutions fastest in.
        label_smoothing: of the training loss only.
        augment: keyword arguments of `mnist_cnn.data.augment.random_affine` for each training batch, or None.
    """

    def __init__(
        self,
        num_classes: int,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        label_smoothing: float = 0.0,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"model.label_smoothing={label_smoothing} is invalid: must be in [0, 1)")
        self.save_hyperparameters(logger=False)  # train.py logs the run's knobs with its results
        self.net = instantiate(net, num_classes=num_classes)
        try:
            instantiate(optimizer)(params=[torch.zeros(1, requires_grad=True)])
        except ValueError as err:  # torch.optim's messages ("Invalid learning rate: -1") do not name the key
            raise ValueError(f"model.optimizer: {err}") from None
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()
        # micro: the share of images classified right; no input checks on the hot path (labels are our own)
        accuracy = lambda: MulticlassAccuracy(num_classes, average="micro", validate_args=False)  # noqa: E731
        self.train_acc, self.val_acc, self.test_acc = accuracy(), accuracy(), accuracy()
        self.val_loss, self.test_loss, self.test_count = MeanMetric(), MeanMetric(), SumMetric()
        self.val_acc_best = MaxMetric()
        # the best score survives a resume; train/acc of an epoch resumed mid-way counts its batches since then
        self.val_acc_best.persistent(True)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 pixels (N, 1, 28, 28) -> logits (N, num_classes)."""
        return self._net(normalize(images))

    def _net(self, x: Tensor) -> Tensor:
        if self.hparams["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = normalize(batch[0]), batch[1]
        if self.hparams["augment"]:
            x = random_affine(x, **self.hparams["augment"])
        logits = self._net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams["label_smoothing"])
        self.train_acc.update(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def model_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        """One validation or test batch: `stage`'s loss and accuracy, logged per epoch."""
        x, y = batch
        logits = self(x)
        loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss.update(F.cross_entropy(logits, y), weight=len(y))
        acc.update(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.model_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # two sanity batches are not a score to remember
            self.val_acc_best.update(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.model_step(batch, "test")
        self.test_count.update(torch.tensor(float(len(batch[1])), device=self.device))
        self.log("test/n_images", self.test_count, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams["optimizer"])(params=self.parameters())
        if not self.hparams["scheduler"]:
            return optimizer
        make = instantiate(self.hparams["scheduler"])
        total = int(self.trainer.estimated_stepping_batches)
        params = inspect.signature(make.func).parameters
        extra = {k: total for k in ("total_steps", "T_max") if k in params and k not in make.keywords}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": make(optimizer, **extra), "interval": "step"}}
