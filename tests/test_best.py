"""The `best` preset's parts: BNCNN, batch augmentation, and an EMA whose weights are the ones validated and tested."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import QUIET, check, metrics, run_train

from mnist_cnn.data.augment import random_affine
from mnist_cnn.data.datamodule import MNISTDataModule
from mnist_cnn.models.module import MNISTClassifier
from mnist_cnn.models.nets import BNCNN


def test_bncnn_shapes_and_size() -> None:
    net = BNCNN()
    out = net(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    convs = 9 * (1 * 16 + 16 * 32 + 32 * 48 + 48 * 64 + 64 * 128)  # no conv bias: batch norm follows
    assert sum(p.numel() for p in net.parameters()) == convs + 2 * (16 + 32 + 48 + 64 + 128) + 128 * 25 * 10 + 10


def test_random_affine_is_identity_at_zero_and_keeps_the_background() -> None:
    torch.manual_seed(0)
    x = torch.full((8, 1, 28, 28), -0.42)
    x[:, :, 10:18, 12:16] = 2.8  # a bar on the background
    same = random_affine(x, degrees=0, translate=0, scale=(1, 1), shear=0)
    assert torch.allclose(same, x, atol=1e-5)
    warped = random_affine(x, degrees=15, translate=0.1, scale=(0.9, 1.1), shear=10)
    assert warped.shape == x.shape and not torch.allclose(warped, x, atol=1e-2)
    assert torch.allclose(warped[:, :, 0, :], torch.tensor(-0.42), atol=1e-5)  # border: background, never zeros
    per_image = [not torch.allclose(warped[0], warped[i], atol=1e-3) for i in range(1, 8)]
    assert all(per_image)  # each image gets its own transform


def test_best_preset_tests_the_weights_it_validated(tiny_mnist: Path, tmp_path: Path) -> None:
    """The EMA weights are checkpointed, and test/acc is exactly what that checkpoint scores (not the raw weights)."""
    check(run_train("experiment=best", "debug=limit", "data.val_size=50", f"data.data_dir={tiny_mnist}",
                    f"hydra.run.dir={tmp_path}", *QUIET))  # fmt: skip
    m = metrics(tmp_path)
    ckpt = torch.load(m["best_ckpt"], weights_only=True)  # plain containers only
    assert ckpt["hyper_parameters"]["augment"]["degrees"] > 0 and ckpt["hyper_parameters"]["label_smoothing"] > 0
    assert "current_model_state" in ckpt  # the raw weights ride along; state_dict holds the average
    model = MNISTClassifier.load_from_checkpoint(m["best_ckpt"], map_location="cpu").eval()
    assert isinstance(model.net, BNCNN)
    dm = MNISTDataModule(str(tiny_mnist), val_size=50)
    dm.setup()
    with torch.no_grad():
        correct = sum(
            int((model(dm.on_after_batch_transfer(b, 0)[0]).argmax(1) == b[1]).sum()) for b in dm.test_dataloader()
        )
    assert abs(correct / 120 - m["test/acc"]) < 1e-6
