"""What TensorBoard (and MLflow) show for a run: the HParams table with real metrics, a confusion matrix and the
misclassified digits that match the model's predictions, also under DDP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import QUIET, REPO, check, metrics, run_cli, train_in_process
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_cnn.callbacks.dashboards import TestDashboards
from mnist_cnn.callbacks.figures import confusion_matrix_image
from mnist_cnn.data.mnist import MNISTDataModule
from mnist_cnn.models.module import MNISTClassifier


def read_events(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def image(acc: EventAccumulator, word: str) -> Image.Image:
    (tag,) = [t for t in acc.Tags()["images"] if word in t]
    return Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string))


def test_the_hparams_table_holds_the_jobs_overrides_then_the_knobs(tiny_mnist: Path, tmp_path: Path) -> None:
    """At most 25 columns, the swept override among them, no paths: the metric columns stay on screen."""
    sweep = tmp_path / "sweep"
    check(
        run_cli(
            "train.py",
            "-m",
            "model.label_smoothing=0.0,0.1",
            "debug=limit",
            "data.val_size=50",
            "logger=tensorboard",
            f"data.data_dir={tiny_mnist}",
            f"hydra.sweep.dir={sweep}",
            *QUIET,
        )
    )
    for job, smoothing in (("0", "0.0"), ("1", "0.1")):
        acc = read_events(sweep / job / "tensorboard")
        hp = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
        keys = list(start.hparams)
        assert len(keys) <= 25 and start.hparams["model/label_smoothing"].string_value == smoothing
        assert start.hparams["debug"].string_value == "limit"  # a group choice is a column too
        assert start.hparams["model/optimizer/lr"].number_value == pytest.approx(1e-3)
        assert start.hparams["model/net/_target_"].string_value == "mnist_cnn.models.nets.SimpleCNN"
        assert not [k for k in keys if k.endswith("_dir") or k.startswith("hydra")]  # paths are not hyperparameters
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert acc.Scalars("hp/val_acc_best")[-1].value == pytest.approx(m["val/acc_best"])


def test_figure_text_is_large_enough_for_tensorboard_cards() -> None:
    """TensorBoard shows an image ~330 px wide: text must stay >= 11 px there (Pillow's scalable font)."""
    from PIL import ImageFont

    from mnist_cnn.callbacks import figures

    assert isinstance(figures._font(19), ImageFont.FreeTypeFont)  # not the 11 px bitmap fallback
    counts = np.diag(np.full(10, 1000))
    cm = confusion_matrix_image(counts, title="test set")
    grid = figures.misclassified_grid(np.zeros((12, 1, 28, 28), np.uint8), np.arange(12) % 10, np.zeros(12, int))
    for image, text_px in ((cm, 19), (grid, 17)):
        assert text_px * 330 / image.shape[1] >= 11, image.shape


def test_a_run_without_validation_logs_no_made_up_val_score(tiny_mnist: Path, tmp_path: Path) -> None:
    """`data.val_size=0` (as `experiment=best` trains): hp/test_acc is real, hp/val_acc stays empty, not NaN."""
    m = train_in_process(
        tmp_path,
        "debug=limit",
        "data.val_size=0",
        f"data.data_dir={tiny_mnist}",
        "callbacks.early_stopping=null",
        "callbacks.model_checkpoint.monitor=null",
    )
    acc = read_events(tmp_path / "tensorboard")
    assert "val/acc_best" not in m and not any(t.startswith("val/") for t in acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("hp/test_acc")] == [pytest.approx(m["test/acc"])]
    assert "hp/val_acc_best" not in acc.Tags()["scalars"]


def test_confusion_matrix_and_misclassified_match_the_predictions(tiny_mnist: Path, tmp_path: Path) -> None:
    """The callback's matrix counts exactly the model's test predictions; the grid holds the first mistakes."""
    torch.manual_seed(0)
    net, optimizer = (
        {"_target_": "mnist_cnn.models.nets.SimpleCNN"},
        {"_target_": "torch.optim.Adam", "_partial_": True},
    )
    model = MNISTClassifier(10, net, optimizer)
    dm = MNISTDataModule(str(tiny_mnist), val_size=50, eval_batch_size=50)
    dashboards = TestDashboards(max_misclassified=20)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(tmp_path, name="tb", version=""),
        callbacks=[dashboards],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, datamodule=dm, verbose=False)
    images, labels = dm.splits["test"]
    with torch.no_grad():
        preds = model.eval()(images).argmax(1)
    expected = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(labels.tolist(), preds.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(dashboards.confusion.compute().cpu(), expected) and int(expected.sum()) == 120
    wrong_idx = (preds != labels).nonzero().flatten()[:20]
    xs, ys, ps = (torch.cat(parts) for parts in zip(*dashboards.wrong, strict=True))
    assert torch.equal(ys, labels[wrong_idx]) and torch.equal(ps, preds[wrong_idx])
    assert torch.equal(xs, images[wrong_idx])  # the uint8 pixels the model was given
    acc = read_events(tmp_path / "tb")
    logged = np.asarray(image(acc, "confusion").convert("RGB"))  # PNG: lossless, so the exact figure
    assert np.array_equal(logged, confusion_matrix_image(expected.numpy(), title="test set"))
    assert image(acc, "misclassified").size[1] > 3 * 56  # 20 digits: 3 rows of 8


def test_mlflow_logger_uses_a_local_file_store(tiny_mnist: Path, tmp_path: Path) -> None:
    m = train_in_process(
        tmp_path / "run",
        "logger=mlflow",
        "debug=limit",
        "data.val_size=50",
        f"data.data_dir={tiny_mnist}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    (run,) = [p.parent for p in (tmp_path / "logs" / "mlruns").glob("*/*/meta.yaml")]
    last = lambda name: float((run / "metrics" / name).read_text().split()[-2])  # noqa: E731  # "time value step"
    assert last("test/acc") == pytest.approx(m["test/acc"]) and last("hp/val_acc_best") == pytest.approx(
        m["val/acc_best"]
    )
    assert (run / "params" / "model" / "optimizer" / "lr").read_text() == "0.001"
    assert {p.name for p in (run / "artifacts" / "test").glob("*.png")} == {"confusion_matrix.png", "misclassified.png"}


def test_mlflow_is_not_imported_unless_it_is_the_logger() -> None:
    code = (
        "import sys, mnist_cnn.train, mnist_cnn.callbacks.dashboards, mnist_cnn.sweeps, "
        "lightning.pytorch.loggers; print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_dashboards_under_ddp_count_every_test_image_once(tiny_mnist: Path, tmp_path: Path) -> None:
    """Two ranks: each holds the whole test set's matrix, summing to its 120 images, and that matrix is logged."""
    record = f"+callbacks.record={{_target_: faults.RecordCounts, folder: {tmp_path}}}"
    check(
        run_cli(
            "train.py",
            "trainer=ddp_cpu",
            "debug=limit",
            "data.val_size=50",
            "trainer.limit_test_batches=null",
            "data.eval_batch_size=7",
            f"data.data_dir={tiny_mnist}",
            f"hydra.run.dir={tmp_path / 'run'}",
            record,
            *QUIET,
            env={"PYTHONPATH": str(REPO / "tests")},
        )
    )
    counts = [np.array(json.loads((tmp_path / f"counts_rank{r}.json").read_text())) for r in (0, 1)]
    assert np.array_equal(counts[0], counts[1]) and counts[0].sum() == 120 == metrics(tmp_path / "run")["test/n_images"]
    logged = np.asarray(image(read_events(tmp_path / "run" / "tensorboard"), "confusion").convert("RGB"))
    assert np.array_equal(logged, confusion_matrix_image(counts[0], title="test set"))
