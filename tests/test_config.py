"""Every option of every config group composes, and what it names can be built; the defaults users rely on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_cnn import CONFIG_DIR
from mnist_cnn.cli import check_types
from mnist_cnn.models.module import MNISTClassifier
from mnist_cnn.resolvers import native_precision

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())
OPTIONS = [
    (g, p.stem) for g in GROUPS if g not in ("paths", "hydra") for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))
]


def option_needs(group: str, option: str) -> list[str]:
    """What an option needs besides itself: image_folder a folder to read, hparams_search the optuna sweeper."""
    return ["data.root=/nonexistent"] if (group, option) == ("data", "image_folder") else []


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_type_checks_and_builds(tmp_path: Path, group: str, option: str) -> None:
    cfg = compose_train(tmp_path, f"{group}={option}", *option_needs(group, option))
    check_types(cfg)  # what the entry point checks before a run: every _target_ and argument exists
    if group == "data" and option == "image_folder":
        return  # built in tests/test_fork.py, on a real folder
    model = instantiate(cfg.model, num_classes=10)
    assert isinstance(model, MNISTClassifier)
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c]
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        return  # a machine without a GPU refuses it: tests/test_cli.py
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert isinstance(trainer, pl.Trainer)


def test_defaults_users_rely_on(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    assert cfg.data.batch_size == 64 and cfg.data.val_size == 5000 and cfg.data.num_classes == 10
    assert cfg.model.net._target_ == "mnist_cnn.models.nets.SimpleCNN"
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 0.001
    assert cfg.model.scheduler is None and cfg.seed == 42 and cfg.ckpt_path is None
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc" and cfg.logger.tensorboard.default_hp_metric is False
    assert cfg.callbacks.last_checkpoint.train_time_interval.minutes == 30
    assert cfg.trainer.precision == native_precision("auto")


def test_data_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_DATA_DIR", "/somewhere/mnist")
    assert compose_train(tmp_path, data=False).data.data_dir == "/somewhere/mnist"
    monkeypatch.delenv("MNIST_DATA_DIR")
    assert compose_train(tmp_path, data=False).data.data_dir == "data"  # where the quick start downloads it


def test_overrides_reach_the_objects(tmp_path: Path) -> None:
    cfg = compose_train(
        tmp_path, "model.optimizer.lr=3e-3", "data.batch_size=128", "trainer.max_epochs=7", "logger=none"
    )
    model = instantiate(cfg.model, num_classes=10)
    assert model.configure_optimizers().param_groups[0]["lr"] == 3e-3
    assert instantiate(cfg.data).batch_size == 128
    assert cfg.logger is None and cfg.callbacks.lr_monitor is None  # it needs a logger: dropped with it
    assert instantiate(cfg.trainer, logger=False).max_epochs == 7


def test_presets_are_the_recipes_they_say(tmp_path: Path) -> None:
    seed = compose_train(tmp_path, "experiment=seed")
    assert seed.data.val_size == 0 and seed.data.batch_size == 64 and seed.trainer.max_epochs == 1
    assert seed.trainer.precision == "32-true" and seed.model.net._target_ == "mnist_cnn.models.nets.SimpleCNN"
    fast = compose_train(tmp_path, "experiment=fast")
    assert fast.trainer.max_steps == 700 and fast.data.batch_size == 128 and fast.data.val_size == 0
    assert fast.model.net._target_ == "mnist_cnn.models.nets.SimpleCNN"  # the seed architecture
    best = compose_train(tmp_path, "experiment=best")
    assert best.model.net._target_ == "mnist_cnn.models.nets.BNCNN" and best.callbacks.ema is not None


def test_bf16_only_where_the_hardware_computes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = set(Path("/proc/cpuinfo").read_text().split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert native_precision("cpu") == ("bf16-mixed" if native else "32-true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16-mixed"), (False, "32-true")):  # Ampere and newer / V100, T4
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert native_precision("gpu") == native_precision("auto") == expected
    saved = OmegaConf.create({"p": "${native_precision:cpu}"})
    assert saved.p == native_precision("cpu")


def test_the_tests_without_mnist_stop_at_once_with_one_line(tmp_path: Path) -> None:
    """Where the README's first command has not run yet: one line saying what to do, not dozens of failures."""
    env = {**os.environ, "MNIST_DATA_DIR": str(tmp_path / "nowhere")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_net.py"],
        cwd=Path(__file__).parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert f"error: the tests need the real MNIST: {tmp_path / 'nowhere'}/MNIST/raw/ lacks" in proc.stdout + proc.stderr
