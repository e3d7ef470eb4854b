"""The house's promises: one input contract, each IDX file read once, old checkpoints still load, the private
APIs checked, and a new net added with a class and a config file alone (README "Extend it")."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write
from torch import nn

from mnist_cnn.core import compat
from mnist_cnn.core.checkpoints import load_checkpoint
from mnist_cnn.core.errors import UserError
from mnist_cnn.data import idx
from mnist_cnn.data.datamodule import MNISTDataModule
from mnist_cnn.infer.classifiers import load_classifier
from mnist_cnn.models import nets
from mnist_cnn.models.module import MNISTClassifier


def test_the_model_takes_uint8_pixels_and_refuses_floats() -> None:
    torch.manual_seed(0)
    model = MNISTClassifier(net={"_target_": "mnist_cnn.models.nets.SimpleCNN"}, optimizer={}).eval()
    pixels = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    expected = model.net((pixels.float() / 255 - 0.1307) / 0.3081)  # the seed's ToTensor + Normalize
    torch.testing.assert_close(model(pixels), expected)
    with pytest.raises(TypeError, match="expected uint8 pixels"):
        model(pixels.float())


def test_each_idx_file_is_checked_and_read_once_per_run(compose_cfg: Any, tiny_mnist: Path, monkeypatch) -> None:
    """The pre-run check (validate) and the DataModule share one read of each of the four files."""
    from mnist_cnn.config.validate import validate

    parsed: list[str] = []
    real_parse = idx._parse

    def spy(path: Path, kind: str) -> np.ndarray:
        parsed.append(Path(path).name)
        return real_parse(path, kind)

    monkeypatch.setattr(idx, "_parse", spy)
    monkeypatch.setattr(idx, "_READ", {})
    validate(compose_cfg(f"data.data_dir={tiny_mnist}", "data.val_size=50"))
    dm = MNISTDataModule(str(tiny_mnist), val_size=50)
    dm.setup()
    assert sorted(parsed) == sorted(idx.ALL_FILES)
    assert len(dm.datasets["train"][1]) == 250 and dm.datasets["test"][0].dtype == torch.uint8


def test_a_checkpoint_from_the_flat_layout_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before the package was split name `mnist_cnn.net.SimpleCNN`: they load unchanged."""
    torch.manual_seed(0)
    model = MNISTClassifier(net={"_target_": "mnist_cnn.models.nets.SimpleCNN"}, optimizer={}).eval()
    old = {
        "net": {"_target_": "mnist_cnn.net.SimpleCNN", "num_classes": 10},  # as the old layout saved it
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001},
        "scheduler": None, "compile": False, "channels_last": True, "label_smoothing": 0.0, "augment": None,
    }  # fmt: skip
    path = tmp_path / "old.ckpt"
    saved = {"state_dict": model.state_dict(), "hyper_parameters": old, "epoch": 2, "global_step": 9}
    torch.save({**saved, "pytorch-lightning_version": "2.6.6"}, path)
    assert load_checkpoint(path)["hyper_parameters"]["net"]["_target_"] == "mnist_cnn.models.nets.SimpleCNN"
    pixels = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.inference_mode():
        want = model(pixels)
        torch.testing.assert_close(load_classifier(path)(pixels), want)
        lightning_loaded = MNISTClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True).eval()
        torch.testing.assert_close(lightning_loaded(pixels), want)


@pytest.mark.parametrize(
    ("module", "name", "check", "works"),
    [
        ("hydra._internal.utils", "run_and_report", compat.hydra_utils, "hydra-core 1.3.x"),
        (
            "lightning.pytorch.strategies.launchers.subprocess_script",
            "_hydra_subprocess_cmd",
            compat.lightning_subprocess_script,
            "lightning 2.6.x",
        ),
        ("lightning.fabric.plugins.precision.precision", "_PRECISION_INPUT", compat.precision_names, "lightning 2.6.x"),
    ],
)
def test_a_renamed_private_api_is_one_line_naming_the_versions_that_work(
    module: str, name: str, check: Any, works: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check()  # present in the pinned versions
    monkeypatch.delattr(importlib.import_module(module), name)
    with pytest.raises(compat.IncompatibleVersion, match=rf"{module}\.{name} is missing in .*needs {works}") as err:
        check()
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


class TinyMLP(nn.Module):
    """A contributor's net: what README "Extend it" adds to mnist_cnn/models/nets.py."""

    def __init__(self, hidden: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_a_new_net_is_a_class_and_a_config_file(
    compose_cfg: Any, tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`model=tiny_mlp` trains, checks and tests end to end with no change to the guard layer (config/, core/)."""
    from mnist_cnn.config.validate import validate
    from mnist_cnn.train import train

    monkeypatch.setattr(nets, "TinyMLP", TinyMLP, raising=False)
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny_mlp.yaml").write_text(
        "defaults:\n  - simple_cnn\n  - _self_\n\nnet:\n  _target_: mnist_cnn.models.nets.TinyMLP\n  hidden: 16\n"
    )
    cfg = compose_cfg(
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny_mlp", f"data.data_dir={tiny_mnist}",
        "data.val_size=50", "debug=limit", "logger=none", "callbacks.progress_bar=null",
        "+trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path / 'run'}",
    )  # fmt: skip
    validate(cfg)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig.instance().set_config(cfg)
        del cfg["hydra"]
    (tmp_path / "run").mkdir()
    metrics = train(cfg)
    assert metrics["n_test"] == 120 and 0 <= metrics["test/acc"] <= 1
    ckpt = load_checkpoint(metrics["best_ckpt"])
    tiny = {"_target_": "mnist_cnn.models.nets.TinyMLP", "hidden": 16, "num_classes": 10}
    assert ckpt["hyper_parameters"]["net"] == tiny
    logits = load_classifier(metrics["best_ckpt"])(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert logits.shape == (2, 10) and np.isfinite(logits.detach().numpy()).all()
