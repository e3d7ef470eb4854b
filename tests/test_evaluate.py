"""`python -m mnist_cnn.evaluate ckpt_path=...`: the training run's test numbers, per class, as files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, metrics, real_data_dir
from omegaconf import OmegaConf
from PIL import Image

from mnist_cnn.callbacks.figures import confusion_matrix_image
from mnist_cnn.evaluate import per_class_accuracy

TRAIN_KEYS = {"test/acc", "test/loss", "n_test", "best_ckpt", "output_dir", "wall_time_s"}


def evaluate(log_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """Run the evaluation as users do, with runs under `log_dir` (MNIST_LOG_DIR)."""
    env = {**os.environ, "MNIST_LOG_DIR": str(log_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mnist_cnn.evaluate", f"data.data_dir={real_data_dir()}", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_evaluate_reproduces_the_training_runs_test_phase(trained_run: Path, tmp_path: Path) -> None:
    train = metrics(trained_run)
    precision = OmegaConf.load(trained_run / ".hydra" / "config.yaml").trainer.precision  # as README says: pass it
    proc = evaluate(tmp_path, f"ckpt_path={train['best_ckpt']}", f"trainer.precision={precision}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "eval" / "runs").iterdir()  # task_name eval: logs/eval/runs/<run>/
    got = json.loads((run / "metrics.json").read_text())
    assert got.keys() >= TRAIN_KEYS
    print(f"test/acc: train {train['test/acc']:.6f}, evaluate {got['test/acc']:.6f}")
    assert abs(got["test/acc"] - train["test/acc"]) < 1e-4
    assert abs(got["test/loss"] - train["test/loss"]) < 1e-4
    assert got["n_test"] == 10_000 and got["output_dir"] == str(run)
    assert Path(got["best_ckpt"]) == Path(train["best_ckpt"]).resolve()

    counts = np.array(got["confusion_matrix"])
    assert counts.shape == (10, 10) and counts.sum() == 10_000
    assert np.trace(counts) / 10_000 == pytest.approx(got["test/acc"], abs=1e-6)
    # The official test set has 980 zeros, 1135 ones, ...: rows are the true digits.
    assert counts.sum(axis=1).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    per_class = got["test/acc_per_class"]
    assert [per_class[str(d)] for d in range(10)] == pytest.approx(np.diag(counts) / counts.sum(axis=1))

    png = Image.open(run / "confusion_matrix.png")
    assert png.format == "PNG" and min(png.size) >= 400
    assert "per-class accuracy: 0: " in proc.stdout + proc.stderr
    assert f"test/acc {train['test/acc']:.4f}" in (run / "eval.log").read_text()


def test_the_checkpoint_can_be_given_on_its_own(trained_run: Path, tmp_path: Path) -> None:
    """`mnist-eval PATH.ckpt`, as mnist-predict and mnist-export take it; `ckpt_path=PATH` still works."""
    proc = evaluate(tmp_path, metrics(trained_run)["best_ckpt"], "++trainer.limit_test_batches=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "eval" / "runs").iterdir()
    got = json.loads((run / "metrics.json").read_text())
    assert Path(got["ckpt_path"]) == Path(metrics(trained_run)["best_ckpt"]).resolve() and got["n_test"] == 2000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "ckpt_path=PATH is required"),
        (["ckpt_path=/nonexistent/x.ckpt"], "ckpt_path=/nonexistent/x.ckpt: no such file"),
        (["ckpt_path=CORRUPT"], "corrupt"),
    ],
)
def test_bad_checkpoints_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # starts like torch's zip, but is not one
    args = [a.replace("CORRUPT", str(corrupt)) for a in args]
    proc = evaluate(tmp_path / "logs", *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "logs" / "eval").exists()  # checked before the run folder is made


def test_per_class_accuracy_is_recall_per_true_digit() -> None:
    counts = np.zeros((10, 10), dtype=np.int64)
    counts[3, 3], counts[3, 5], counts[7, 7] = 3, 1, 2
    acc = per_class_accuracy(counts)
    assert acc["3"] == 0.75 and acc["7"] == 1.0 and acc["0"] is None


def test_confusion_matrix_image_shows_the_confusions() -> None:
    perfect = np.diag(np.full(10, 100))
    confused = perfect.copy()
    confused[5, 5], confused[5, 3] = 70, 30  # 30% of the fives read as threes
    a, b = confusion_matrix_image(perfect), confusion_matrix_image(confused, title="model")
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    # The (5, 3) cell is tinted red in the second figure and white in the first.
    red = (b[..., 0] > 240) & (b[..., 1] < 200) & (b[..., 2] < 200)
    assert red.sum() > 100 and not ((a[..., 0] > 240) & (a[..., 1] < 200) & (a[..., 2] < 200)).any()
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_image(np.zeros((2, 3)))
