# ruff: noqa: E501  (the parametrize tables: one case per line)
"""The LightningModule's parts: the best preset's net, augmentation and EMA; the checks a config or a checkpoint
goes through before it is trusted."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import compose_train, train_in_process
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from mnist_cnn.callbacks.ema import EMA
from mnist_cnn.cli import UserError, check_types
from mnist_cnn.data.augment import random_affine
from mnist_cnn.data.mnist import MNISTDataModule
from mnist_cnn.infer.classifiers import load_classifier
from mnist_cnn.models.module import MNISTClassifier
from mnist_cnn.models.nets import BNCNN
from mnist_cnn.ranks import CoreBoundCPU

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True}


def test_bncnn_shapes_and_size() -> None:
    net = BNCNN()
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    convs = 9 * (1 * 16 + 16 * 32 + 32 * 48 + 48 * 64 + 64 * 128)  # no conv bias: batch norm follows
    assert sum(p.numel() for p in net.parameters()) == convs + 2 * (16 + 32 + 48 + 64 + 128) + 128 * 25 * 10 + 10


def test_random_affine_is_identity_at_zero_and_keeps_the_background() -> None:
    torch.manual_seed(0)
    x = torch.full((8, 1, 28, 28), -0.42)
    x[:, :, 10:18, 12:16] = 2.8  # a bar on the background
    assert torch.allclose(random_affine(x, degrees=0, translate=0, scale=(1, 1), shear=0), x, atol=1e-5)
    warped = random_affine(x, degrees=15, translate=0.1, scale=(0.9, 1.1), shear=10)
    assert warped.shape == x.shape and not torch.allclose(warped, x, atol=1e-2)
    assert torch.allclose(warped[:, :, 0, :], torch.tensor(-0.42), atol=1e-5)  # border: background, never zeros
    assert all(not torch.allclose(warped[0], warped[i], atol=1e-3) for i in range(1, 8))  # each its own transform


def test_ema_warms_up_then_decays_at_its_rate() -> None:
    decay, steps = 0.9, 90  # the warm-up, (1 + n) / (10 + n), reaches 0.9 after 80 updates: both regimes

    def reference(averaged: Tensor, current: Tensor, n: Tensor | int) -> Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged * d + current * (1.0 - d)

    torch.manual_seed(0)
    model = MNISTClassifier(10, {"_target_": "mnist_cnn.models.nets.BNCNN"}, ADAM)
    expected = AveragedModel(model, avg_fn=reference, use_buffers=True)
    ema, trainer = EMA(decay=decay), SimpleNamespace(global_step=0, state=SimpleNamespace(fn=TrainerFn.FITTING))
    ema.setup(trainer, model, "fit")  # type: ignore[arg-type]
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.train()(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8))  # BN statistics move
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        trainer.global_step = step
        expected.update_parameters(model)
        ema.on_train_batch_end(trainer, model, None, None, step - 1)  # type: ignore[arg-type]
    got, want = ema._average_model.module.state_dict(), expected.module.state_dict()  # type: ignore[union-attr]
    for key in (k for k, v in want.items() if v.is_floating_point()):  # counters are copied, not averaged
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_best_preset_tests_the_ema_weights_it_checkpointed(tiny_mnist: Path, tmp_path: Path) -> None:
    m = train_in_process(tmp_path, "experiment=best", "debug=limit", "data.val_size=50", f"data.data_dir={tiny_mnist}")
    ckpt = torch.load(m["best_ckpt"], weights_only=True)
    assert ckpt["hyper_parameters"]["augment"]["degrees"] > 0 and "current_model_state" in ckpt  # raw weights too
    model = MNISTClassifier.load_from_checkpoint(m["best_ckpt"], map_location="cpu", weights_only=True).eval()
    assert isinstance(model.net, BNCNN)
    dm = MNISTDataModule(str(tiny_mnist), val_size=50)
    dm.setup()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in dm.test_dataloader())
    assert correct / 120 == pytest.approx(m["test/acc"], abs=1e-6)


@pytest.mark.parametrize(("net", "refused"), [
    ({"_target_": "os.system", "command": "touch /tmp/pwned"}, "os.system"),
    ({"_target_": "mnist_cnn.models.nets.SimpleCNN", "num_classes": {"_target_": "builtins.eval", "_args_": ["10"]}}, "builtins.eval"),
])  # fmt: skip
def test_a_checkpoint_naming_code_outside_the_package_is_refused(tmp_path: Path, net: dict, refused: str) -> None:
    path = tmp_path / "shared.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": net, "optimizer": ADAM, "num_classes": 10}}, path)
    with pytest.raises(UserError, match=rf"refused: its net must be a class under 'mnist_cnn.', not '{refused}'"):
        load_classifier(path)


@pytest.mark.parametrize(("override", "message"), [
    ("+model.net.widht=3", r"model.net.widht: mnist_cnn.models.nets.SimpleCNN has no argument 'widht' \(it takes: num_classes\)"),
    ("+data.batchsize=3", r"data.batchsize: .*MNISTDataModule has no argument 'batchsize' \(did you mean batch_size\?\)"),
    ("model.net._target_=mnist_cnn.models.nets.SimpleCN", r"cannot import it \(did you mean SimpleCNN\?\)"),
    ("data.val_size=abc", r"data.val_size='abc': must be"),
    ("trainer.max_epochs=abc", r"trainer.max_epochs='abc': must be int or null"),
])  # fmt: skip
def test_config_values_are_checked_against_the_classes_they_configure(
    tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        check_types(compose_train(tmp_path, override))


def test_cpu_processes_are_bounded_by_the_usable_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert CoreBoundCPU.parse_devices(cores) == cores
    with pytest.raises(
        UserError, match=rf"trainer.devices={cores + 1} asks for {cores + 1} CPU processes.* {cores} cores"
    ):
        CoreBoundCPU.parse_devices(cores + 1)


def test_every_argument_of_the_module_is_a_hydra_key(tmp_path: Path) -> None:
    """A knob reaches its class through its YAML alone: every constructor argument has a key in the config."""
    cfg: Any = compose_train(tmp_path)
    for node, cls in ((cfg.model, MNISTClassifier), (cfg.data, MNISTDataModule)):
        wanted = set(inspect.signature(cls).parameters) - ({"num_classes"} if cls is MNISTClassifier else set())
        assert wanted <= set(node), wanted - set(node)
