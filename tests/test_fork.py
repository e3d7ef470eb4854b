"""What a fork changes without editing the package: another IDX data set, a folder of images, its own optimizer
and net (tests/fork_parts.py), each named from conf/ or the command line alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHORT, check, compose_train, metrics, run_cli, train_in_process, write_idx
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from mnist_cnn.cli import UserError, describe
from mnist_cnn.infer.classifiers import load_classifier


def idx_dataset(raw: Path, names: dict[str, list[str]], classes: int, n: tuple[int, int] = (200, 50)) -> None:
    rng = np.random.default_rng(0)
    for (images, labels), count in zip(names.values(), n, strict=True):
        write_idx(raw / images, rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / labels, np.arange(count) % classes)


def test_fashion_mnist_trains_offline_from_its_idx_files(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    names = {
        "train": ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
        "test": ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    }
    idx_dataset(raw, names, classes=10)
    m = train_in_process(
        tmp_path / "run", "data=fashion_mnist", f"data.data_dir={tmp_path / 'data'}", "data.val_size=20", *SHORT
    )
    assert m["test/n_images"] == 50  # its own files, none downloaded (the machine is offline)
    assert sorted(p.name for p in raw.iterdir()) == sorted(n for pair in names.values() for n in pair)


def test_an_idx_data_set_with_its_own_file_names_and_classes(tmp_path: Path) -> None:
    names = {
        "train": ["shapes-train.images", "shapes-train.labels"],
        "test": ["shapes-test.images", "shapes-test.labels"],
    }
    idx_dataset(tmp_path / "shapes", names, classes=5)
    files = "{train: [shapes-train.images, shapes-train.labels], test: [shapes-test.images, shapes-test.labels]}"
    m = train_in_process(
        tmp_path / "run",
        f"data.data_dir={tmp_path}",
        "data.raw_folder=shapes",
        f"data.files={files}",
        "data.num_classes=5",
        "data.download=null",
        "data.val_size=20",
        *SHORT,
    )
    assert m["test/n_images"] == 50
    head = torch.load(m["best_ckpt"], weights_only=True)["state_dict"]["net.fc1.weight"]
    assert head.shape[0] == 5  # the net's output follows the data's classes


def test_a_label_beyond_num_classes_names_the_file(tmp_path: Path) -> None:
    names = {"train": ["a.images", "a.labels"], "test": ["b.images", "b.labels"]}
    idx_dataset(tmp_path / "raw", names, classes=7)
    cfg = compose_train(
        tmp_path / "run",
        f"data.data_dir={tmp_path}",
        "data.raw_folder=raw",
        "data.num_classes=5",
        "data.files={train: [a.images, a.labels], test: [b.images, b.labels]}",
        "data.download=null",
    )
    dm = instantiate(cfg.data)
    with pytest.raises(UserError, match=rf"{tmp_path / 'raw' / 'a.labels'}: label 5 at index 5 is not a class 0-4"):
        dm.setup()


def image_tree(root: Path, classes: list[str], per_class: tuple[int, int]) -> None:
    """ImageNet's layout; every class a bar at its own place, in a different size and colour mode each."""
    kinds = [("RGB", (40, 30)), ("L", (28, 28)), ("RGBA", (64, 64)), ("P", (20, 33))]
    for split, count in zip(("train", "test"), per_class, strict=True):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                mode, size = kinds[(i + c) % len(kinds)]
                a = np.zeros((size[1], size[0]), np.uint8)
                a[:, c * size[0] // len(classes) : (c + 1) * size[0] // len(classes)] = 255
                Image.fromarray(a).convert(mode).save(root / split / name / f"{i}.png")


def test_a_folder_of_images_trains_through_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    image_tree(root, ["cat", "dog", "emu"], per_class=(20, 5))
    run = tmp_path / "run"
    check(
        run_cli(
            "train.py",
            "data=image_folder",
            f"data.root={root}",
            "trainer.max_epochs=2",
            "logger=none",
            "callbacks.progress_bar=null",
            f"hydra.run.dir={run}",
        )
    )
    m = metrics(run)
    assert m["test/n_images"] == 15 and "val/acc" in m  # validation: 10% of train/, as for MNIST
    head = torch.load(m["best_ckpt"], weights_only=True)["state_dict"]["net.fc1.weight"]
    assert head.shape[0] == 3


def test_image_folder_brings_every_image_to_the_nets_input(tmp_path: Path) -> None:
    image_tree(tmp_path / "r", ["a", "b"], per_class=(8, 2))
    dm = instantiate(compose_train(tmp_path / "run", "data=image_folder", f"data.root={tmp_path / 'r'}").data)
    dm.setup()
    images, labels = dm.splits["train"]
    assert dm.num_classes == 2 and images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
    assert len(images) + len(dm.splits["val"][1]) == 16 and set(labels.tolist()) <= {0, 1}


def test_image_folder_refuses_train_and_test_with_different_classes(tmp_path: Path) -> None:
    image_tree(tmp_path / "r", ["a", "b"], per_class=(2, 2))
    (tmp_path / "r" / "test" / "b").rename(tmp_path / "r" / "test" / "c")
    with pytest.raises(InstantiationException) as err:
        instantiate(compose_train(tmp_path / "run", "data=image_folder", f"data.root={tmp_path / 'r'}").data)
    assert (
        describe(err.value)
        == f"{tmp_path / 'r' / 'test'} has the classes ['a', 'c'], {tmp_path / 'r' / 'train'} has ['a', 'b']"
    )


def test_an_optimizer_and_a_net_from_outside_the_package(tmp_path: Path, tiny_mnist: Path) -> None:
    m = train_in_process(
        tmp_path / "run",
        f"data.data_dir={tiny_mnist}",
        "data.val_size=50",
        *SHORT,
        "model.optimizer._target_=fork_parts.SignSGD",
        "~model.optimizer.weight_decay",
        "model.net._target_=fork_parts.TinyNet",
        "+model.net.width=4",
    )
    ckpt = torch.load(m["best_ckpt"], weights_only=True)
    assert ckpt["hyper_parameters"]["net"] == {"_target_": "fork_parts.TinyNet", "width": 4}
    assert ckpt["state_dict"]["net.head.weight"].shape == (10, 4)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 1e-3
    # a checkpoint from elsewhere stays untrusted: the prediction tools build only the package's own nets
    with pytest.raises(UserError, match=r"fork_parts\.TinyNet"):
        load_classifier(m["best_ckpt"])
