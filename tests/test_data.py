"""The DataModule on tiny IDX files: sizes, splits, dtypes, normalisation, sharding, errors."""

from __future__ import annotations

import functools
import logging
import operator
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from conftest import make_tiny_mnist
from torchvision import datasets, transforms

from mnist_cnn.core.errors import UserError
from mnist_cnn.data.contract import MEAN, STD, normalize
from mnist_cnn.data.datamodule import EvalShard, MNISTDataModule


def batches(dm: MNISTDataModule, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batches as the net sees them: uint8 from the loader (the contract), normalised by the model first."""
    loader = getattr(dm, f"{split}_dataloader")()
    out = []
    for x, y in loader:
        assert x.dtype == torch.uint8
        out.append((normalize(x), y))
    return out


def test_sizes_split_and_dtypes(tiny_mnist: Path) -> None:
    dm = MNISTDataModule(str(tiny_mnist), batch_size=32, val_size=50)
    dm.setup()
    (tr_x, tr_y), (va_x, _va_y), (te_x, _te_y) = dm.datasets["train"], dm.datasets["val"], dm.datasets["test"]
    assert (len(tr_x), len(va_x), len(te_x)) == (250, 50, 120)
    assert tr_x.shape[1:] == (1, 28, 28) and tr_x.dtype == torch.uint8 and tr_y.dtype == torch.int64
    # The split partitions the 300 training images: no image in both, none lost.
    train = datasets.MNIST(str(tiny_mnist), train=True)
    rows = {bytes(img.numpy()) for img in train.data}
    assert {bytes(i.numpy()) for i in tr_x[:, 0]} | {bytes(i.numpy()) for i in va_x[:, 0]} == rows
    assert not {bytes(i.numpy()) for i in tr_x[:, 0]} & {bytes(i.numpy()) for i in va_x[:, 0]}
    # Batches: 250 / 32 -> 8 batches, the last one partial; evaluation in eval_batch_size chunks.
    b = batches(dm, "train")
    assert len(b) == len(dm.train_dataloader()) == 8 and sum(len(y) for _, y in b) == 250
    assert b[0][0].dtype == torch.float32 and b[0][0].shape == (32, 1, 28, 28)


def test_split_seed_is_independent_of_the_shuffle_seed(tiny_mnist: Path) -> None:
    def val_labels(split_seed: int, shuffle_seed: int) -> torch.Tensor:
        dm = MNISTDataModule(str(tiny_mnist), val_size=50, split_seed=split_seed, shuffle_seed=shuffle_seed)
        dm.setup()
        return dm.datasets["val"][0]

    assert torch.equal(val_labels(0, 1), val_labels(0, 2))
    assert not torch.equal(val_labels(0, 1), val_labels(1, 1))


def test_normalisation_matches_the_seed_transforms(tiny_mnist: Path) -> None:
    """The in-memory path gives the very tensors the seed's ToTensor() + Normalize() gives, same labels."""
    dm = MNISTDataModule(str(tiny_mnist), val_size=0)
    dm.setup()
    x, y = batches(dm, "test")[0]
    seed_ds = datasets.MNIST(
        str(tiny_mnist),
        train=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]),
    )
    expected = torch.stack([seed_ds[i][0] for i in range(len(y))])
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    assert y.tolist() == [seed_ds[i][1] for i in range(len(y))]
    # and the per-sample comparison loader yields the same test batches
    pil = MNISTDataModule(str(tiny_mnist), val_size=0, loader="torchvision")
    pil.setup()
    px, py = batches(pil, "test")[0]
    torch.testing.assert_close(px, x, rtol=0, atol=1e-6)
    assert torch.equal(py, y)


def test_shuffle_is_reproducible_per_epoch(tiny_mnist: Path) -> None:
    def order(seed: int, epoch: int) -> torch.Tensor:
        dm = MNISTDataModule(str(tiny_mnist), val_size=0, shuffle_seed=seed, batch_size=300)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # Lightning does this at every epoch start
        return next(iter(loader))[1]

    assert torch.equal(order(7, 0), order(7, 0))
    assert not torch.equal(order(7, 0), order(7, 1))
    assert not torch.equal(order(7, 0), order(8, 0))


class FakeTrainer:
    """Just what the DataModule reads from a trainer: its rank and world size."""

    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size, self.overfit_batches = rank, world, 0
        self.strategy = type("S", (), {"root_device": torch.device("cpu")})()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards(tiny_mnist: Path, world: int) -> None:
    """Training shards are equal length (DDP hangs otherwise); evaluation counts every image exactly once."""
    train_sizes, train_images, test_images = [], [], []
    for rank in range(world):
        dm = MNISTDataModule(str(tiny_mnist), val_size=55, batch_size=16)
        dm.trainer = FakeTrainer(rank, world)  # type: ignore[assignment]
        dm.setup()
        shard = [bytes(img.numpy()) for x, _ in dm.train_dataloader() for img in x]
        train_sizes.append((len(dm.train_dataloader()), len(shard)))
        train_images += shard
        test_images += [bytes(img.numpy()) for x, _ in dm.test_dataloader() for img in x]
    assert len(set(train_sizes)) == 1
    # Disjoint shards covering all 245 training images; only the padding (to a multiple of world) repeats.
    padding = -245 % world
    assert len(train_images) == 245 + padding and len(set(train_images)) == 245
    all_test = [bytes(i.numpy()) for i in datasets.MNIST(str(tiny_mnist), train=False).data]
    assert sorted(test_images) == sorted(all_test)  # 120 over 3 or 4 ranks: no padding, no loss


def test_eval_shard_without_padding() -> None:
    shards = [list(EvalShard(10_000, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [3334, 3333, 3333]
    assert sorted(functools.reduce(operator.iadd, shards, [])) == list(range(10_000))


def test_val_size_zero_means_no_validation(tiny_mnist: Path) -> None:
    dm = MNISTDataModule(str(tiny_mnist), val_size=0)
    dm.setup()
    assert not dm.has_val and dm.val_dataloader() == [] and len(dm.datasets["train"][0]) == 300


def test_val_size_too_large(tiny_mnist: Path) -> None:
    with pytest.raises(UserError, match=r"data.val_size=300 must be in \[0, 300\)"):
        MNISTDataModule(str(tiny_mnist), val_size=300).setup()


def test_missing_files_and_failed_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: datasets.MNIST) -> None:
        raise URLError("no network")

    monkeypatch.setattr(datasets.MNIST, "download", offline)
    dm = MNISTDataModule(str(tmp_path))
    with pytest.raises(UserError, match=r"MNIST is not in .*MNIST/raw and downloading it failed .*MNIST_DATA_DIR"):
        dm.prepare_data()
    with pytest.raises(UserError, match=r"MNIST is not in .*MNIST/raw: put the four raw IDX files there"):
        dm.setup()


def test_legacy_processed_files_are_ignored_with_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Old torchvision left MNIST/processed/{training,test}.pt; torchvision's MNIST still prefers them to raw/."""
    root = make_tiny_mnist(tmp_path)
    processed = root / "MNIST" / "processed"
    processed.mkdir()
    for name, n in (("training.pt", 300), ("test.pt", 120)):  # loadable, but all black sevens
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.full((n,), 7)), processed / name)
    assert set(datasets.MNIST(str(root), train=True).targets.tolist()) == {7}  # the trap is real
    dm = MNISTDataModule(str(root), val_size=0)
    with caplog.at_level(logging.INFO, logger="mnist_cnn.data.datamodule"):
        dm.setup()
    assert sorted(dm.datasets["train"][1].tolist()) == sorted(i % 10 for i in range(300))
    assert dm.datasets["test"][1].tolist() == [i % 10 for i in range(120)]  # the raw files' labels
    (line,) = [r.getMessage() for r in caplog.records if "processed" in r.getMessage()]
    assert line.startswith("ignoring test.pt, training.pt in ") and "MNIST/raw/" in line
