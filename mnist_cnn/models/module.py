"""The LightningModule: loss, metrics and optimisation around any net from `mnist_cnn.models.nets`."""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_cnn.core.checkpoints import checked, renamed
from mnist_cnn.data.augment import random_affine
from mnist_cnn.data.contract import normalize


def plain(cfg: Any) -> Any:
    """DictConfig -> dict: hparams must hold plain containers to load under torch's weights_only default."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class MNISTClassifier(pl.LightningModule):
    """Classifies 28x28 digits with the net described by `net` (a `_target_` config, kept as a plain dict).

    `optimizer` and `scheduler` are Hydra `_partial_` configs; scheduler steps every optimizer step and
    gets `total_steps` / `T_max` from the trainer when its config leaves them out. `label_smoothing` applies
    to the training loss only; `augment` (keyword arguments of `mnist_cnn.data.augment.random_affine`, or None)
    warps each training batch. Both default to off, the seed article's recipe.

    Input: uint8 pixels (N, 1, 28, 28), white ink on black (mnist_cnn/data/contract.py); `forward` normalises.
    """

    # What this module logs, so what a callback may monitor (checked by mnist_cnn/config/validate.py).
    MONITORABLE = ("val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc")

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
        label_smoothing: float = 0.0,
        augment: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # renamed: a checkpoint of an earlier layout names the net by its old module path
        net, optimizer, scheduler, augment = renamed(plain(net)), plain(optimizer), plain(scheduler), plain(augment)
        self.save_hyperparameters(logger=False)  # the run's whole config is logged by train.py instead
        self.net: nn.Module = instantiate(checked("net", net))
        if channels_last:  # NHWC: the layout oneDNN (CPU) and cuDNN (tensor cores) run convolutions fastest in
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()  # the inner net only: whole-module compile breaks self.log on this Lightning
        num_classes = 10
        # validate_args=False: no per-step input checks on the hot path (labels come from our own loader)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_acc.persistent(True)  # a mid-epoch checkpoint keeps the epoch's counts so far
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_count = SumMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume, so the best score is not forgotten

    def forward(self, images: Tensor) -> Tensor:
        """uint8 pixels (N, 1, 28, 28) -> logits (N, 10)."""
        return self._net(normalize(images))

    def _net(self, x: Tensor) -> Tensor:
        if self.hparams.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        x = normalize(x)
        if self.hparams.get("augment"):  # random affine warps of the batch tensor (mnist_cnn.data.augment)
            x = random_affine(x, **self.hparams["augment"])
        logits = self._net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.get("label_smoothing", 0.0))
        self.train_acc.update(logits, y)
        # Only on the steps the logger writes (Lightning's rule) and the epoch's last one (for monitors):
        # self.log costs ~5% of a step here.
        trainer: Any = self.trainer  # log_every_n_steps / fast_dev_run are set in Trainer.__init__, untyped
        every = trainer.log_every_n_steps
        if (
            trainer.fast_dev_run
            or batch_idx + 1 == trainer.num_training_batches
            or (every and (self.global_step + 1) % every == 0)
        ):
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc.compute())
        self.train_acc.reset()

    def model_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        """One validation or test batch: the loss and accuracy metrics of `stage`, logged per epoch."""
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
        if self.trainer.sanity_checking:
            return  # two sanity batches are not a score to remember
        self.val_acc_best.update(self.val_acc.compute())  # compute() caches: Lightning's own call reuses it
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.model_step(batch, "test")
        self.test_count.update(torch.tensor(float(len(batch[1])), device=batch[1].device))
        self.log("test/n_images", self.test_count, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(checked("optimizer", self.hparams["optimizer"]))(params=self.parameters())
        if not self.hparams["scheduler"]:
            return optimizer
        make = instantiate(checked("scheduler", self.hparams["scheduler"]))
        params = inspect.signature(make.func).parameters
        total = int(self.trainer.estimated_stepping_batches)
        extra = {k: total for k in ("total_steps", "T_max") if k in params and k not in make.keywords}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": make(optimizer, **extra), "interval": "step"},
        }
