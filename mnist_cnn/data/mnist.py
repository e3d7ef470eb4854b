"""MNIST, or any data set in its IDX format, as a LightningDataModule: the official train/test split of the files.

The files are checked and read by `mnist_cnn.data.idx`; torchvision only downloads them when they are missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from hydra.utils import get_class

from mnist_cnn.cli import UserError
from mnist_cnn.data.idx import read_split
from mnist_cnn.data.memory import InMemoryDataModule, Split

MNIST_FILES = {
    "train": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
    "test": ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
}


class MNISTDataModule(InMemoryDataModule):
    """IDX files `data_dir/raw_folder/files[split]` (images, labels); the rest as `InMemoryDataModule`.

    Args:
        data_dir: the folder that holds `raw_folder`.
        raw_folder: where the four files are, as torchvision lays them out (`MNIST/raw`, `FashionMNIST/raw`).
        files: the images and labels file of each split, `{"train": [images, labels], "test": [...]}`.
        download: a torchvision data set class (`torchvision.datasets.MNIST`) that downloads the files into
            `data_dir` when one is missing; None: never download.
        num_classes: labels are 0 .. num_classes - 1.
        image_size: the images' side in pixels, what the net takes.
    """

    def __init__(
        self,
        data_dir: str = "data",
        raw_folder: str = "MNIST/raw",
        files: dict[str, list[str]] | None = None,
        download: str | None = "torchvision.datasets.MNIST",
        num_classes: int = 10,
        image_size: int = 28,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int | float = 5000,
        split_seed: int = 0,
        shuffle_seed: int | None = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_size, split_seed, shuffle_seed)
        self.save_hyperparameters(logger=False)
        self.raw = Path(data_dir).expanduser() / raw_folder
        self.files = files or MNIST_FILES
        self.num_classes, self.image_size = num_classes, image_size

    def _missing(self) -> list[Path]:
        return [p for names in self.files.values() for p in (self.raw / n for n in names) if not p.exists()]

    def prepare_data(self) -> None:
        """Download only what is missing: a read-only folder that has the files is never written."""
        if not (missing := self._missing()) or not self.hparams["download"]:
            return
        root = Path(self.hparams["data_dir"]).expanduser()  # torchvision downloads into root/<class name>/raw
        created = next((p for p in reversed([self.raw, *self.raw.parents]) if not p.exists()), None)
        try:
            for train in (True, False):
                get_class(self.hparams["download"])(str(root), train=train, download=True)
        except Exception as err:  # torchvision raises URLError, RuntimeError or OSError depending on the failure
            if created is not None:  # leave no empty folders (or half a download) in the user's tree
                shutil.rmtree(created, ignore_errors=True)
            why = " ".join(str(err).split())
            raise UserError(f"{missing[0]} is missing and downloading it failed ({why})") from None

    def load(self) -> tuple[Split, Split]:
        if missing := self._missing():
            raise UserError(f"{missing[0]} is missing: put the IDX files there, or set data.data_dir (MNIST_DATA_DIR)")
        train, test = (
            read_split(self.raw, self.files[s][0], self.files[s][1], self.num_classes, self.image_size)
            for s in ("train", "test")
        )
        # the arrays are read-only views of the files' bytes: one copy each into tensors
        return tuple((torch.tensor(x).unsqueeze(1), torch.tensor(y, dtype=torch.long)) for x, y in (train, test))  # type: ignore[return-value]
