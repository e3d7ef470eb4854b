"""Every option of every config group composes, and what it names can be built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mnist_cnn import CONFIG_DIR
from mnist_cnn.config.launch import check_devices
from mnist_cnn.core.errors import UserError
from mnist_cnn.data.datamodule import MNISTDataModule
from mnist_cnn.models.module import MNISTClassifier

GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((Path(CONFIG_DIR) / g).glob("*.yaml"))]
GPU_TRAINERS = [
    o
    for g, o in OPTIONS
    if g == "trainer" and OmegaConf.select(OmegaConf.load(Path(CONFIG_DIR, g, f"{o}.yaml")), "accelerator") == "gpu"
]


def test_expected_groups_exist() -> None:
    for group in ("data", "model", "trainer", "callbacks", "logger", "paths", "hydra", "experiment", "debug"):
        assert group in GROUPS
    for group, option in [("trainer", "default"), ("trainer", "cpu"), ("trainer", "gpu"), ("logger", "csv"),
                          ("logger", "none"), ("experiment", "seed"), ("debug", "fdr"), ("debug", "overfit"),
                          ("debug", "limit"), ("debug", "profiler")]:  # fmt: skip
        assert (group, option) in OPTIONS


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_builds(
    compose_cfg: Any, monkeypatch: pytest.MonkeyPatch, group: str, option: str
) -> None:
    override = [] if group in ("paths", "hydra") else [f"{group}={option}"]
    cfg = compose_cfg(*override)
    for key, value in (cfg.hydra.job.env_set or {}).items():  # as Hydra sets them for the job
        monkeypatch.setenv(str(key), str(value))
    assert cfg.hydra.job.chdir is False
    assert isinstance(instantiate(cfg.data), MNISTDataModule)
    assert isinstance(instantiate(cfg.model, _recursive_=False, _convert_="all"), MNISTClassifier)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    if cfg.trainer.accelerator == "gpu":  # on a machine without one, train.py refuses before building anything:
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
        with pytest.raises(UserError, match=r"^trainer.accelerator=gpu needs a CUDA GPU, but this machine has none"):
            check_devices(cfg.trainer.accelerator, cfg.trainer.devices)
        return  # the Trainer itself: test_gpu_trainers_build (marked gpu)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert isinstance(trainer, pl.Trainer)


def test_gpu_options_are_the_ones_the_gpu_tests_build() -> None:
    assert GPU_TRAINERS == ["ddp", "gpu"]


@pytest.mark.gpu
@pytest.mark.parametrize("option", GPU_TRAINERS)
def test_gpu_trainers_build(compose_cfg: Any, option: str) -> None:
    cfg = compose_cfg(f"trainer={option}")
    check_devices(cfg.trainer.accelerator, cfg.trainer.devices)  # this machine can run it
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    assert isinstance(trainer.accelerator, pl.accelerators.CUDAAccelerator)
    assert trainer.num_devices == (1 if option == "gpu" else torch.cuda.device_count())


def test_defaults_users_rely_on(compose_cfg: Any) -> None:
    cfg = compose_cfg()
    assert cfg.data.batch_size == 64 and cfg.data.val_size == 5000 and cfg.data.loader == "memory"
    assert cfg.model.net._target_ == "mnist_cnn.models.nets.SimpleCNN"
    assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 0.001
    assert cfg.model.optimizer._partial_ is True and cfg.model.scheduler is None
    for key in ("max_epochs", "accelerator", "devices", "precision", "strategy"):
        assert key in cfg.trainer  # overridable without '+'
    assert cfg.seed is not None and cfg.ckpt_path is None
    assert cfg.logger.tensorboard.default_hp_metric is False


def test_data_dir_comes_from_the_environment(compose_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNIST_DATA_DIR", "/somewhere/mnist")
    assert compose_cfg().data.data_dir == "/somewhere/mnist"
    monkeypatch.delenv("MNIST_DATA_DIR")
    assert compose_cfg().data.data_dir == "data"


def test_overrides_reach_the_objects(compose_cfg: Any) -> None:
    cfg = compose_cfg("model.optimizer.lr=3e-3", "data.batch_size=128", "trainer.max_epochs=7", "logger=none")
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    assert model.configure_optimizers().param_groups[0]["lr"] == 3e-3
    assert instantiate(cfg.data).hparams.batch_size == 128
    assert cfg.logger is None and cfg.callbacks.lr_monitor is None  # needs a logger: dropped
    assert instantiate(cfg.trainer, logger=False).max_epochs == 7


def test_seed_experiment_is_the_articles_recipe(compose_cfg: Any) -> None:
    cfg = compose_cfg("experiment=seed")
    assert cfg.data.val_size == 0 and cfg.data.batch_size == 64 and cfg.trainer.max_epochs == 1
    assert cfg.model.optimizer.lr == 0.001 and cfg.model.net._target_ == "mnist_cnn.models.nets.SimpleCNN"
