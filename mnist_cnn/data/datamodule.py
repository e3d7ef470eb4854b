"""MNIST as a LightningDataModule: IDX files in, uint8 batches out (the model normalises: data/contract.py).

`mnist_cnn.data.idx` checks and reads the official IDX files (torchvision only downloads them when missing);
by default the images then live in memory as uint8 tensors on the training device and batches are slices of
them, which removes the per-sample PIL + DataLoader path that dominates the seed script's step time.
`loader=torchvision` keeps that per-sample path (PIL image -> tensor in a DataLoader) for comparison.
The module shards data itself (the trainer configs set `use_distributed_sampler: false`) so evaluation
counts every test image exactly once at any world size.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from mnist_cnn.core.errors import UserError, first_line
from mnist_cnn.data.idx import check_readable_folder, missing_files, raw_folder, read_split

Split = Literal["train", "val", "test"]
log = logging.getLogger(__name__)
FIX = "put the four raw IDX files there, or point MNIST_DATA_DIR (or data.data_dir=) at a folder holding MNIST/raw/"


class PilDigits(Dataset[tuple[Tensor, int]]):
    """The seed article's per-sample path: each item a PIL image turned into a tensor (uint8, as the contract)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        from torchvision.transforms import PILToTensor

        self.images, self.labels, self.to_tensor = images, labels, PILToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        return self.to_tensor(Image.fromarray(self.images[i].numpy(), mode="L")), int(self.labels[i])


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


def download_error(err: BaseException) -> str:
    """torchvision's "Error downloading X:" with the reason (the last mirror's), which its first line leaves out."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    reasons = [line for line in lines[1:] if not line.startswith("Tried ")]
    return f"{lines[0]} {reasons[-1]}" if lines and reasons else first_line(err)


def eval_batch_size(n: int, batch_size: int, limit: float | int) -> int:
    """`batch_size`, made small enough that a fractional `trainer.limit_*_batches` still keeps >= 1 batch.

    Evaluation batches are big (1,000 images: fewer, faster steps), so the 5,000 validation images are 5
    batches and `limit_val_batches=0.1` would ask Lightning for 0.5 of one, which it refuses. A fraction
    shrinks the batches to about `limit` x the shard instead: that fraction of the images is evaluated.
    """
    if not isinstance(limit, float) or not 0.0 < limit < 1.0 or n == 0:
        return batch_size
    size = min(batch_size, max(1, int(n * limit)))
    while size > 1 and int(math.ceil(n / size) * limit) < 1:  # Lightning's own rounding: int(batches * limit)
        size -= 1
    return size


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
        if not missing_files(self.data_dir):
            return
        from torchvision import datasets

        raw = raw_folder(self.data_dir)
        created = None if raw.exists() else raw  # the top-most folder the download is about to create
        while created is not None and not created.parent.exists():
            created = created.parent
        try:
            for train in (True, False):
                datasets.MNIST(self.data_dir, train=train, download=True)
        except Exception as err:  # torchvision raises RuntimeError/URLError/OSError depending on the failure
            missing = self._missing()
            if created is not None:  # leave no empty MNIST/raw (or half a download) behind in the user's folder
                shutil.rmtree(created, ignore_errors=True)
            raise UserError(f"{missing} and downloading it failed ({download_error(err)}); {FIX}") from err

    def _missing(self) -> str:
        raw, missing = raw_folder(self.data_dir), missing_files(self.data_dir)
        return f"MNIST is not in {raw}" if len(missing) == 4 else f"{raw / missing[0]} is missing"

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        check_readable_folder(self.data_dir)
        if missing_files(self.data_dir):
            raise UserError(f"{self._missing()}: {FIX}")
        # torchvision's MNIST loads legacy MNIST/processed/*.pt in place of the raw files; we never do: say so.
        processed = raw_folder(self.data_dir).parent / "processed"
        if legacy := sorted(p.name for p in processed.glob("*.pt")):
            log.info("ignoring %s in %s: the images are read from MNIST/raw/", ", ".join(legacy), processed)
        (train_x, train_y), (test_x, test_y) = (read_split(self.data_dir, s) for s in ("train", "test"))
        val_size, loader = self.hparams["val_size"], self.hparams["loader"]
        if not 0 <= val_size < len(train_y):
            raise UserError(f"data.val_size={val_size} must be in [0, {len(train_y)}) (0 trains on all images)")
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.hparams["split_seed"]))
        parts = {"train": order[val_size:], "val": order[:val_size]}
        # The arrays are read-only views of the file bytes (shared by every reader): copy once into tensors.
        images, labels = torch.tensor(train_x).unsqueeze(1), torch.tensor(train_y, dtype=torch.long)
        test = (torch.tensor(test_x).unsqueeze(1), torch.tensor(test_y, dtype=torch.long))
        if loader == "memory":
            device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
            self.datasets = {k: (images[v].to(device), labels[v].to(device)) for k, v in parts.items()}
            self.datasets["test"] = (test[0].to(device), test[1].to(device))
        elif loader == "torchvision":
            train = PilDigits(images[:, 0], labels)
            self.datasets = {k: Subset(train, v.tolist()) for k, v in parts.items()}
            self.datasets["test"] = PilDigits(test[0][:, 0], test[1])
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
        shard = EvalShard(self._len(split), rank, world)
        limit = getattr(self.trainer, f"limit_{split}_batches", 1.0) if self.trainer else 1.0
        return self._loader(split, shard, eval_batch_size(len(shard), self.hparams["eval_batch_size"], limit))

    def val_dataloader(self) -> Any:
        return self._eval_loader("val") if self.has_val else []

    def test_dataloader(self) -> Any:
        return self._eval_loader("test")
