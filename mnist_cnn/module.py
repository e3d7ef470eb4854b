"""The LightningModule: loss, metrics and optimisation around any net from `mnist_cnn.net`."""

from __future__ import annotations

import inspect
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_cnn import STARTED
from mnist_cnn.augment import random_affine
from mnist_cnn.checkpoints import ALLOWED_TARGETS, checked  # noqa: F401  (defined with the checkpoint checks)


def plain(cfg: Any) -> Any:
    """DictConfig -> dict: hparams must hold plain containers to load under torch's weights_only default."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class MNISTClassifier(pl.LightningModule):
    """Classifies 28x28 digits with the net described by `net` (a `_target_` config, kept as a plain dict).

    `optimizer` and `scheduler` are Hydra `_partial_` configs; scheduler steps every optimizer step and
    gets `total_steps` / `T_max` from the trainer when its config leaves them out. `label_smoothing` applies
    to the training loss only; `augment` (keyword arguments of `mnist_cnn.augment.random_affine`, or None)
    warps each training batch. Both default to off, the seed article's recipe.
    """

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
        net, optimizer, scheduler, augment = plain(net), plain(optimizer), plain(scheduler), plain(augment)
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
        self._epoch_start = self._train_seconds = 0.0
        self.started = STARTED  # process start; train.py moves it to the job's start for later jobs of a multirun
        self.startup_s: float | None = None  # started -> first training step (imports, data, setup)
        self._epoch_images = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.hparams.get("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.hparams.get("augment"):  # random affine warps of the batch tensor (mnist_cnn.augment)
            x = random_affine(x, **self.hparams["augment"])
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.get("label_smoothing", 0.0))
        self.train_acc.update(logits, y)
        self._epoch_images += len(y)
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

    def on_train_epoch_start(self) -> None:
        self._epoch_start, self._epoch_images = time.perf_counter(), 0
        if self.startup_s is None:
            self.startup_s = self._epoch_start - self.started

    def on_train_batch_end(self, *args: Any) -> None:
        self._train_seconds = time.perf_counter() - self._epoch_start  # training only, not the val pass after it

    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc.compute())
        if self._train_seconds > 0:
            images_per_s = self._epoch_images * self.trainer.world_size / self._train_seconds
            self.log("perf/train_images_per_s", images_per_s)
        self.train_acc.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.val_acc.update(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # two sanity batches are not a score to remember
        self.val_acc_best.update(self.val_acc.compute())  # compute() caches: Lightning's own call reuses it
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_loss.update(F.cross_entropy(logits, y), weight=len(y))
        self.test_acc.update(logits, y)
        self.test_count.update(torch.tensor(float(len(y)), device=y.device))
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
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
