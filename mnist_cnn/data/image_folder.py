"""A folder of images in ImageNet's layout as a LightningDataModule: `root/train/<class>/*`, `root/test/<class>/*`.

Class names are the folder names (sorted, as torchvision's ImageFolder numbers them); every image, whatever its
size or colour mode, is brought to the net's input: `image_size` x `image_size` grayscale, uint8 like MNIST.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder

from mnist_cnn.cli import UserError
from mnist_cnn.data.memory import InMemoryDataModule, Split


class ImageFolderDataModule(InMemoryDataModule):
    """`root/train` and `root/test` read once into memory; the validation split is taken from train.

    Args:
        root: the folder holding `train/` and `test/`, one subfolder per class in each.
        image_size: the side the images are resized to (the net's input).
        The rest: as `InMemoryDataModule`.
    """

    def __init__(
        self, root: str, image_size: int = 28, batch_size: int = 64, eval_batch_size: int = 1000,
        val_size: int | float = 5000, split_seed: int = 0, shuffle_seed: int | None = 0,
    ) -> None:  # fmt: skip
        super().__init__(batch_size, eval_batch_size, val_size, split_seed, shuffle_seed)
        self.save_hyperparameters(logger=False)
        self.root = Path(root).expanduser()
        self.classes = self._classes("train")
        if (test := self._classes("test")) != self.classes:
            raise UserError(f"{self.root / 'test'} has the classes {test}, {self.root / 'train'} has {self.classes}")
        self.num_classes = len(self.classes)

    def _classes(self, split: str) -> list[str]:
        folder = self.root / split
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder: data.root must hold train/ and test/, a folder per class")
        return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))

    def load(self) -> tuple[Split, Split]:
        size = self.hparams["image_size"]
        to_uint8 = transforms.Compose(
            [transforms.Grayscale(), transforms.Resize((size, size)), transforms.PILToTensor()]
        )
        splits = []
        for split in ("train", "test"):
            try:
                images = ImageFolder(str(self.root / split), transform=to_uint8)
                pairs = [images[i] for i in range(len(images))]
            except (OSError, ValueError) as err:  # no images in a class folder, a file that is no image
                raise UserError(f"{self.root / split}: {' '.join(str(err).split())}") from None
            splits.append((torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])))
        return splits[0], splits[1]
