"""MNIST as a LightningDataModule.

torchvision reads (or downloads) the official IDX files; by default the images then live in memory as
uint8 tensors on the training device and are normalised per batch there, which removes the per-sample
PIL + DataLoader path that dominates the seed script's step time. `loader=torchvision` keeps that
per-sample path for comparison. The module shards data itself (the trainer configs set
`use_distributed_sampler: false`) so evaluation counts every test image exactly once at any world size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, Sampler, Subset
from torchvision import datasets, transforms

from mnist_cnn import UserError
from mnist_cnn.idx import check_readable_folder, check_split, missing_files, raw_folder

MEAN, STD = 0.1307, 0.3081  # the seed article's Normalize((0.1307,), (0.3081,))
Split = Literal["train", "val", "test"]


def normalize(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float, the same numbers as the seed's ToTensor() + Normalize(MEAN, STD)."""
    return images.float().div_(255).sub_(MEAN).div_(STD)


class EvalShard(Sampler[int]):
    """Rank r of w takes indices r, r+w, r+2w, ...: every image exactly once, never padded.

    torch's DistributedSampler pads with repeats so ranks are equal length; fine for training, wrong for
    a test set of 10,000 images over 3 processes.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class TensorBatches:
    """Batches sliced from in-memory tensors in the order of `sampler`: no per-sample Python, no PIL.

    Exposes `sampler` (and no `batch_sampler`) like a DataLoader, so Lightning calls `set_epoch` each epoch.
    Resumable: Lightning stores `state_dict()` (epoch and batches served) in mid-epoch checkpoints and hands it
    back through `load_state_dict`, so a resumed run continues with the very next batch of the same order.
    """

    batch_sampler = None

    def __init__(self, images: Tensor, labels: Tensor, sampler: Sampler[int], batch_size: int) -> None:
        self.images, self.labels, self.sampler, self.batch_size = images, labels, sampler, batch_size
        self.served = 0  # batches handed out in the current pass
        self._resume: dict[str, int] | None = None

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)  # type: ignore[arg-type]

    @property
    def epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long, device=self.images.device)
        resume, self._resume = self._resume, None
        # Skip what the interrupted run already trained on, but only in the epoch it was interrupted in.
        self.served = resume["batches"] if resume and resume["epoch"] == self.epoch else 0
        for idx in order.split(self.batch_size)[self.served :]:
            self.served += 1
            yield self.images[idx], self.labels[idx]


class MNISTDataModule(pl.LightningDataModule):
    """The official 60k/10k MNIST; `val_size` training images held out (by `split_seed`) for validation."""

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 0,
        shuffle_seed: int | None = 0,
        loader: Literal["memory", "torchvision"] = "memory",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_dir = Path(data_dir).expanduser()
        self.datasets: dict[str, Any] = {}

    @property
    def has_val(self) -> bool:
        return self.hparams["val_size"] > 0

    def prepare_data(self) -> None:
        """Download only when the raw files are missing; a read-only folder that has them is never written."""
        check_readable_folder(self.data_dir)
        missing = missing_files(self.data_dir)
        if not missing:
            return
        try:
            for train in (True, False):
                datasets.MNIST(self.data_dir, train=train, download=True)
        except Exception as err:  # torchvision raises RuntimeError/URLError/OSError depending on the failure
            raw, why = raw_folder(self.data_dir), str(err).splitlines()[0] if str(err) else "no detail"
            where = f"MNIST is not in {raw}" if len(missing) == 4 else f"{raw / missing[0]} is missing"
            raise UserError(
                f"{where} and downloading it failed ({type(err).__name__}: {why}); put the four raw IDX files "
                "there, or point MNIST_DATA_DIR (or data.data_dir=) at a folder holding MNIST/raw/"
            ) from err

    def _read(self, train: bool) -> datasets.MNIST:
        """Check the IDX files (magic, shape, size, counts, labels) before and after torchvision parses them."""
        check_readable_folder(self.data_dir)
        split = "train" if train else "test"
        raw, missing = raw_folder(self.data_dir), missing_files(self.data_dir)
        if missing:
            raise UserError(
                f"{f'MNIST is not in {raw}' if len(missing) == 4 else f'{raw / missing[0]} is missing'}: put the "
                "four raw IDX files there, or point MNIST_DATA_DIR (or data.data_dir=) at a folder holding MNIST/raw/"
            )
        check_split(self.data_dir, split)
        return datasets.MNIST(self.data_dir, train=train, download=False)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        val_size, loader = self.hparams["val_size"], self.hparams["loader"]
        train, test = self._read(train=True), self._read(train=False)
        if not 0 <= val_size < len(train):
            raise UserError(f"data.val_size={val_size} must be in [0, {len(train)}) (0 trains on all images)")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.hparams["split_seed"]))
        parts = {"train": order[val_size:], "val": order[:val_size]}
        if loader == "memory":
            device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
            images, labels = train.data.unsqueeze(1), train.targets
            self.datasets = {k: (images[v].to(device), labels[v].to(device)) for k, v in parts.items()}
            self.datasets["test"] = (test.data.unsqueeze(1).to(device), test.targets.to(device))
        elif loader == "torchvision":
            tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
            train.transform = test.transform = tf
            self.datasets = {k: Subset(train, v.tolist()) for k, v in parts.items()}
            self.datasets["test"] = test
        else:
            raise UserError(f"data.loader={loader!r} is not one of: memory, torchvision")

    def _rank_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def _loader(self, split: Split, sampler: Sampler[int], batch_size: int) -> Any:
        data = self.datasets[split]
        if self.hparams["loader"] == "memory":
            images, labels = data
            return TensorBatches(images, labels, sampler, batch_size)
        workers = self.hparams["num_workers"]
        return DataLoader(data, batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)

    def _len(self, split: Split) -> int:
        data = self.datasets[split]
        return len(data[1]) if isinstance(data, tuple) else len(data)

    def train_dataloader(self) -> Any:
        rank, world = self._rank_world()
        overfit = bool(self.trainer and self.trainer.overfit_batches)  # type: ignore[attr-defined]  # overfitting needs the same batches
        # Equal-length shards (padded by repeats) and one permutation per (seed, epoch) on every rank.
        sampler: Sampler[int] = DistributedSampler(
            range(self._len("train")),  # type: ignore[arg-type]
            num_replicas=world,
            rank=rank,
            shuffle=not overfit,
            seed=self.hparams["shuffle_seed"] or 0,
        )
        return self._loader("train", sampler, self.hparams["batch_size"])

    def _eval_loader(self, split: Split) -> Any:
        rank, world = self._rank_world()
        return self._loader(split, EvalShard(self._len(split), rank, world), self.hparams["eval_batch_size"])

    def val_dataloader(self) -> Any:
        return self._eval_loader("val") if self.has_val else []

    def test_dataloader(self) -> Any:
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Normalise on the device, after the (4x smaller) uint8 batch has been moved there."""
        x, y = batch
        return (normalize(x) if x.dtype == torch.uint8 else x), y
