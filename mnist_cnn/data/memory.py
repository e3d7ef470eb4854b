"""Images held in memory as uint8 tensors on the training device, batches sliced from them (no per-sample Python).

The base of every data module here: a subclass says how to read its files (`load`); this class holds out a
validation split of the training images, shards every split per rank and serves the batches. The model
normalises each batch (mnist_cnn/models/module.py), so the uint8 images are all the data there is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DistributedSampler, Sampler

from mnist_cnn.cli import UserError

Split = tuple[Tensor, Tensor]  # uint8 images (N, C, H, W), int64 labels (N,)


class TensorBatches:
    """Batches sliced from in-memory tensors in the order of `sampler`.

    Exposes `sampler` like a DataLoader, so Lightning calls its `set_epoch` every epoch, and `state_dict` /
    `load_state_dict`, which Lightning saves in mid-epoch checkpoints: a resumed run continues with the very
    next batch of the same order.
    """

    batch_sampler = None

    def __init__(self, images: Tensor, labels: Tensor, sampler: Sampler[int], batch_size: int) -> None:
        self.images, self.labels, self.sampler, self.batch_size = images, labels, sampler, batch_size
        self.served = 0  # batches handed out in the current pass
        self._resume: dict[str, int] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = state

    def __iter__(self) -> Iterator[Split]:
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.images.device)
        resume, self._resume = self._resume, None
        same_epoch = resume is not None and resume["epoch"] == getattr(self.sampler, "epoch", 0)
        self.served = resume["batches"] if resume and same_epoch else 0  # skip what was trained on before
        for idx in order.split(self.batch_size)[self.served :]:
            self.served += 1
            yield self.images[idx], self.labels[idx]


class InMemoryDataModule(pl.LightningDataModule):
    """A train/val/test data module over images `load` returns; `num_classes` is set by the subclass.

    Args:
        batch_size: training images per step **per device** (the global batch is x world size).
        eval_batch_size: images per validation and test step.
        val_size: training images held out for validation: a count, or a fraction < 1 (0: none, train on all).
        split_seed: the seed of that split, independent of the run's seed.
        shuffle_seed: the seed of the training order (each epoch its own); the configs pass the run's seed.
    """

    num_classes: int

    def __init__(
        self, batch_size: int = 64, eval_batch_size: int = 1000, val_size: int | float = 5000, split_seed: int = 0,
        shuffle_seed: int | None = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        for name, value, least in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                   ("val_size", val_size, 0)):  # fmt: skip
            if value < least:
                raise ValueError(f"data.{name}={value} is invalid: must be >= {least}")
        self.batch_size, self.eval_batch_size, self.val_size = batch_size, eval_batch_size, val_size
        self.split_seed, self.shuffle_seed = split_seed, shuffle_seed or 0
        self.splits: dict[str, Split] = {}

    def load(self) -> tuple[Split, Split]:
        """The training and the test split, read and checked."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        (images, labels), test = self.load()
        n_val = round(self.val_size * len(labels)) if isinstance(self.val_size, float) else self.val_size
        if n_val >= len(labels):
            raise UserError(f"data.val_size={self.val_size} is invalid: the data has {len(labels)} training images")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        parts = {"train": order[n_val:], "val": order[:n_val]}
        self.splits = {k: (images[i].to(device), labels[i].to(device)) for k, i in parts.items()}
        self.splits["test"] = (test[0].to(device), test[1].to(device))

    def _rank_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self) -> Any:
        images, labels = self.splits["train"]
        rank, world = self._rank_world()
        overfit = bool(self.trainer and self.trainer.overfit_batches)  # type: ignore[attr-defined]
        # equal-length shards (DDP steps in lockstep), one permutation per (seed, epoch) on every rank
        shards = range(len(labels))
        sampler: Sampler[int] = DistributedSampler(shards, world, rank, shuffle=not overfit, seed=self.shuffle_seed)  # type: ignore[arg-type]
        return TensorBatches(images, labels, sampler, self.batch_size)

    def _eval_loader(self, split: str) -> Any:
        images, labels = self.splits[split]
        rank, world = self._rank_world()
        # every image exactly once, never padded: test counts are exact at any world size
        sampler = UnrepeatedDistributedSampler(range(len(labels)), world, rank, shuffle=False)
        return TensorBatches(images, labels, sampler, self.eval_batch_size)

    def val_dataloader(self) -> Any:
        return self._eval_loader("val") if self.val_size else []

    def test_dataloader(self) -> Any:
        return self._eval_loader("test")
