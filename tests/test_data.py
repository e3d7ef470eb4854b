"""The data modules on tiny IDX files: sizes, splits, dtypes, the seed's normalisation, sharding, resuming, and
a failed download that leaves the user's tree as it was."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import metrics, real_data_dir
from inject import as_unprivileged
from torchvision import datasets, transforms

from mnist_cnn.cli import UserError
from mnist_cnn.data.mnist import MNISTDataModule
from mnist_cnn.models.module import MEAN, STD, normalize


class FakeTrainer:
    """What a data module reads from its trainer: rank, world size, device."""

    def __init__(self, rank: int, world: int) -> None:
        self.global_rank, self.world_size, self.overfit_batches = rank, world, 0
        self.strategy = type("S", (), {"root_device": torch.device("cpu")})()


def test_sizes_split_and_dtypes(tiny_mnist: Path) -> None:
    dm = MNISTDataModule(str(tiny_mnist), batch_size=32, val_size=50)
    dm.setup()
    (tr_x, tr_y), (va_x, _), (te_x, _) = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    assert (len(tr_x), len(va_x), len(te_x)) == (250, 50, 120)
    assert tr_x.shape[1:] == (1, 28, 28) and tr_x.dtype == torch.uint8 and tr_y.dtype == torch.int64
    every = {bytes(img.numpy()) for img in datasets.MNIST(str(tiny_mnist), train=True).data}
    train, val = ({bytes(i.numpy()) for i in x[:, 0]} for x in (tr_x, va_x))
    assert train | val == every and not train & val  # the split partitions the training images
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == 8 and sum(len(y) for _, y in batches) == 250


def test_val_size_as_a_fraction_and_zero(tiny_mnist: Path) -> None:
    dm = MNISTDataModule(str(tiny_mnist), val_size=0.1)
    dm.setup()
    assert len(dm.splits["val"][1]) == 30 and len(dm.splits["train"][1]) == 270
    none = MNISTDataModule(str(tiny_mnist), val_size=0)
    none.setup()
    assert none.val_dataloader() == [] and len(none.splits["train"][1]) == 300
    with pytest.raises(UserError, match=r"data.val_size=300 is invalid: the data has 300 training images"):
        MNISTDataModule(str(tiny_mnist), val_size=300).setup()


def test_split_seed_is_independent_of_the_shuffle_seed(tiny_mnist: Path) -> None:
    def val_images(split_seed: int, shuffle_seed: int) -> torch.Tensor:
        dm = MNISTDataModule(str(tiny_mnist), val_size=50, split_seed=split_seed, shuffle_seed=shuffle_seed)
        dm.setup()
        return dm.splits["val"][0]

    assert torch.equal(val_images(0, 1), val_images(0, 2)) and not torch.equal(val_images(0, 1), val_images(1, 1))


def test_the_model_sees_the_seeds_normalised_tensors(tiny_mnist: Path) -> None:
    """uint8 from the loader, normalised in the model: the very numbers ToTensor() + Normalize() give."""
    dm = MNISTDataModule(str(tiny_mnist), val_size=0)
    dm.setup()
    x, y = next(iter(dm.test_dataloader()))
    assert x.dtype == torch.uint8
    seed = datasets.MNIST(
        str(tiny_mnist),
        train=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]),
    )
    torch.testing.assert_close(normalize(x), torch.stack([seed[i][0] for i in range(len(y))]), rtol=0, atol=1e-6)
    assert y.tolist() == [seed[i][1] for i in range(len(y))]
    with pytest.raises(TypeError, match="expected uint8 pixels"):
        normalize(x.float())


def test_the_training_order_is_reproducible_per_epoch(tiny_mnist: Path) -> None:
    def order(seed: int, epoch: int) -> torch.Tensor:
        dm = MNISTDataModule(str(tiny_mnist), val_size=0, shuffle_seed=seed, batch_size=300)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # Lightning does this at every epoch start
        return next(iter(loader))[1]

    assert torch.equal(order(7, 0), order(7, 0))
    assert not torch.equal(order(7, 0), order(7, 1)) and not torch.equal(order(7, 0), order(8, 0))


def test_a_resumed_loader_continues_with_the_next_batch_of_the_same_epoch(tiny_mnist: Path) -> None:
    dm = MNISTDataModule(str(tiny_mnist), val_size=0, batch_size=40)
    dm.setup()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    it = iter(loader)
    first = [next(it)[1] for _ in range(3)]
    state = loader.state_dict()
    rest = [y for _, y in it]
    again = dm.train_dataloader()
    again.sampler.set_epoch(3)
    again.load_state_dict(state)
    assert state == {"epoch": 3, "batches": 3} and len(first) + len(rest) == len(loader)
    assert all(torch.equal(a, b) for a, b in zip([y for _, y in again], rest, strict=True))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shards_train_in_lockstep_and_test_every_image_once(tiny_mnist: Path, world: int) -> None:
    sizes, train, test = [], [], []
    for rank in range(world):
        dm = MNISTDataModule(str(tiny_mnist), val_size=55, batch_size=16, eval_batch_size=7)
        dm.trainer = FakeTrainer(rank, world)  # type: ignore[assignment]
        dm.setup()
        shard = [bytes(img.numpy()) for x, _ in dm.train_dataloader() for img in x]
        sizes.append((len(dm.train_dataloader()), len(shard)))
        train += shard
        test += [bytes(img.numpy()) for x, _ in dm.test_dataloader() for img in x]
    assert len(set(sizes)) == 1  # equal shards: DDP steps in lockstep
    assert len(train) == 245 + (-245 % world) and len(set(train)) == 245  # only the padding repeats
    assert sorted(test) == sorted(bytes(i.numpy()) for i in datasets.MNIST(str(tiny_mnist), train=False).data)


class FailingDownload:
    """A torchvision data set class whose download fails, as offline."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        Path(root, "MNIST", "raw", "half.gz").parent.mkdir(parents=True, exist_ok=True)
        Path(root, "MNIST", "raw", "half.gz").write_bytes(b"\x1f\x8b")
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno 111] Connection refused>"
        )


def test_a_failed_download_leaves_no_folders_behind(tmp_path: Path) -> None:
    dm = MNISTDataModule(str(tmp_path / "data"), download="test_data.FailingDownload")
    with pytest.raises(
        UserError, match=r"train-images-idx3-ubyte is missing and downloading it failed \(Error downloading"
    ):
        dm.prepare_data()
    assert not (tmp_path / "data").exists()  # what the download created is gone


def test_files_present_are_never_downloaded_or_written(tmp_path: Path) -> None:
    """The real MNIST, read-only to an unprivileged user: a run reads it and writes nothing there."""

    def tree(root: Path) -> str:
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            h.update(str(p.relative_to(root)).encode() + (p.read_bytes() if p.is_file() else b""))
        return h.hexdigest()

    data, before = real_data_dir(), tree(real_data_dir())
    out = Path(tempfile.mkdtemp(prefix="mnist-ro-"))
    out.chmod(0o777)
    proc = as_unprivileged(["debug=fdr", f"data.data_dir={data}", f"hydra.run.dir={out / 'run'}"], out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metrics(out / "run")["test/n_images"] > 0 and tree(data) == before
