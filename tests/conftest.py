"""Shared fixtures: configs composed with Hydra's compose API and trained in-process (`train(cfg)`), as
lightning-hydra-template's tests do; subprocesses (`run_cli`) only where the command line itself is under test.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

# The CI guards (no skips, no missing tests) and the gpu marker's skip: pytest finds hooks by name here.
from suite_guard import pytest_runtest_logreport, pytest_runtest_setup, pytest_sessionfinish  # noqa: F401

from mnist_cnn import CONFIG_DIR
from mnist_cnn.train import train

REPO = Path(__file__).resolve().parents[1]
# No progress bar: nulling the callback alone would make Lightning add its default.
QUIET = ("++callbacks.progress_bar=null", "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false")
# A few batches of each split: what an in-process test needs to exercise a path, in seconds.
SHORT = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.eval_batch_size=100",
)
# Accuracy thresholds on real MNIST need the same arithmetic on every CPU (the default precision follows the CPU).
FP32 = ("trainer.precision=32-true", "seed=42")


def real_data_dir() -> Path:
    """The real MNIST: $MNIST_DATA_DIR (CI sets it), else `data/`, where the README's first command downloads it."""
    return Path(os.environ.get("MNIST_DATA_DIR") or REPO / "data").resolve()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Without the real MNIST the end-to-end tests cannot run: stop at once with one line, not dozens of failures."""
    raw = real_data_dir() / "MNIST" / "raw"
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if missing := [n for n in names if not (raw / n).is_file()]:
        pytest.exit(
            f"error: the tests need the real MNIST: {raw}/ lacks {', '.join(missing)}; run `python train.py` once "
            "(it downloads into data/) or set MNIST_DATA_DIR to a folder holding MNIST/raw/",
            returncode=2,
        )


def compose_train(out: Path, *overrides: str, name: str = "train", data: bool = True) -> DictConfig:
    """The config `python train.py OVERRIDES` runs with, its run folder `out`, set as Hydra's current config."""
    GlobalHydra.instance().clear()
    defaults = [f"hydra.run.dir={out}", f"paths.output_dir={out}", *QUIET]
    if data and not any(o.startswith("data=") for o in overrides):
        defaults.append(f"data.data_dir={real_data_dir()}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(name, overrides=[*defaults, *overrides], return_hydra_config=True)
    os.environ.update({str(k): str(v) for k, v in (cfg.hydra.job.env_set or {}).items()})  # as Hydra sets them
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.name = name
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)  # what hydra.main does before calling the task, with the config ...
    with open_dict(cfg):
        del cfg["hydra"]  # ... that the task gets: without Hydra's own node (${hydra:...} still resolves)
    out.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def cfg_train(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """cfg_train(*overrides) -> the training config, run folder tmp_path/run."""
    yield lambda *overrides, **kw: compose_train(tmp_path / "run", *overrides, **kw)
    GlobalHydra.instance().clear()


def train_in_process(out: Path, *overrides: str) -> dict[str, Any]:
    """`python train.py OVERRIDES` without a new process: the metrics it returns."""
    return train(compose_train(out, *overrides))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file as MNIST's own: big-endian magic (0, 0, type 0x08 = uint8, ndim), dims, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_tiny_mnist(root: Path, n_train: int = 300, n_test: int = 120, seed: int = 0) -> Path:
    """n_train / n_test random images in MNIST's file layout under root/MNIST/raw."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_mnist(tmp_path_factory.mktemp("tiny"))


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, **kw: Any
) -> subprocess.CompletedProcess:
    """`python ARGS` from the repo root, as a user types it (e.g. run_cli("train.py", "debug=fdr"))."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=kw.pop("cwd", REPO),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def check(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    )
    return proc


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run, shared: the default config, 1 epoch on the real MNIST, fp32 (the default follows the CPU).

    test/acc >= 0.975 holds with room (0.979 at seed 42)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train_in_process(run_dir, "trainer.max_epochs=1", *FP32)
    GlobalHydra.instance().clear()
    return run_dir
