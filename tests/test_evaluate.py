"""`mnist-eval ckpt_path=...` (python -m mnist_cnn.evaluate): the training run's test numbers, per class, as files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FP32, REPO, metrics, real_data_dir
from PIL import Image

from mnist_cnn.callbacks.figures import confusion_matrix_image

EVAL_KEYS = {"test/acc", "test/loss", "test/n_images", "ckpt_path", "test/acc_per_class", "confusion_matrix"}


PYTHON_M = (sys.executable, "-m", "mnist_cnn.evaluate")


def evaluate(log_dir: Path, *overrides: str, command: tuple[str, ...] = PYTHON_M) -> subprocess.CompletedProcess[str]:
    """Run the evaluation as users do (`command`: python -m mnist_cnn.evaluate, or mnist-eval), runs under `log_dir`."""
    env = {**os.environ, "MNIST_LOG_DIR": str(log_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*command, f"data.data_dir={real_data_dir()}", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_mnist_eval_reproduces_the_training_runs_test_phase(trained_run: Path, tmp_path: Path) -> None:
    """The README's `mnist-eval ckpt_path=...` (the console script), with the run's precision, as README says."""
    train = metrics(trained_run)
    mnist_eval = (str(Path(sys.executable).parent / "mnist-eval"),)
    proc = evaluate(tmp_path, f"ckpt_path={train['best_ckpt']}", *FP32, command=mnist_eval)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "eval" / "runs").iterdir()  # task_name eval: logs/eval/runs/<run>/
    got = json.loads((run / "metrics.json").read_text())
    assert got.keys() >= EVAL_KEYS
    print(f"test/acc: train {train['test/acc']:.6f}, evaluate {got['test/acc']:.6f}")
    assert abs(got["test/acc"] - train["test/acc"]) < 1e-4
    assert abs(got["test/loss"] - train["test/loss"]) < 1e-4
    assert got["test/n_images"] == train["test/n_images"] == 10_000
    assert Path(got["ckpt_path"]) == Path(train["best_ckpt"]).resolve()

    counts = np.array(got["confusion_matrix"])
    assert counts.shape == (10, 10) and counts.sum() == 10_000
    assert np.trace(counts) / 10_000 == pytest.approx(got["test/acc"], abs=1e-6)
    # The official test set has 980 zeros, 1135 ones, ...: rows are the true digits.
    assert counts.sum(axis=1).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    per_class = got["test/acc_per_class"]
    assert [per_class[str(d)] for d in range(10)] == pytest.approx(np.diag(counts) / counts.sum(axis=1))

    png = Image.open(run / "confusion_matrix.png")
    assert png.format == "PNG" and min(png.size) >= 400
    log = (run / "eval.log").read_text()
    assert f"test/acc {train['test/acc']:.4f} on 10000 images" in log and "per class: 0: " in log


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Missing mandatory value: ckpt_path"),
        (["ckpt_path=/nonexistent/x.ckpt"], "ckpt_path=/nonexistent/x.ckpt: no such file"),
    ],
)
def test_a_missing_checkpoint_is_one_line_and_leaves_no_run(tmp_path: Path, args: list[str], message: str) -> None:
    """(A corrupt file is refused by the same loader: test_predict.py.)"""
    proc = evaluate(tmp_path / "logs", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    runs = tmp_path / "logs" / "eval" / "runs"
    assert not runs.exists() or list(runs.iterdir()) == [], "no run folder left behind"


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
