"""What TensorBoard (and MLflow) show for a run: real hparams metrics, a confusion matrix, misclassified digits."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import QUIET, REPO, check, metrics, run_train
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_cnn.callbacks.dashboards import TestDashboards
from mnist_cnn.callbacks.figures import confusion_matrix_image
from mnist_cnn.data.datamodule import MNISTDataModule
from mnist_cnn.models.module import MNISTClassifier


def read_events(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


def image(acc: EventAccumulator, word: str) -> Image.Image:
    (tag,) = [t for t in acc.Tags()["images"] if word in t]
    return Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string))


def test_run_event_files_have_hparams_with_real_metrics_and_test_images(tiny_mnist: Path, tmp_path: Path) -> None:
    check(run_train("debug=limit", "data.val_size=50", "trainer.log_every_n_steps=1", f"data.data_dir={tiny_mnist}",
                    f"hydra.run.dir={tmp_path}", *QUIET))  # fmt: skip
    m, acc = metrics(tmp_path), read_events(tmp_path / "tensorboard")
    hp = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert {i.name.tag for i in experiment.metric_infos} == {"hp/val_acc", "hp/test_acc"}
    assert [e.value for e in acc.Scalars("hp/test_acc")] == [pytest.approx(m["test/acc"])]
    assert [e.value for e in acc.Scalars("hp/val_acc")] == [pytest.approx(m["val/acc_best"])]
    assert any(t.startswith("lr-") for t in acc.Tags()["scalars"])  # the learning rate
    confusion, wrong = image(acc, "confusion"), image(acc, "misclassified")
    assert confusion.size[0] > 400 and confusion.size[1] > 400
    assert wrong.size[0] >= 300 and wrong.size[1] > 56  # random images: nearly all of them are misclassified


def test_a_run_without_validation_logs_no_made_up_val_score(tiny_mnist: Path, tmp_path: Path) -> None:
    """`data.val_size=0` (as `experiment=best` trains): hp/test_acc is real, hp/val_acc stays empty, not NaN."""
    check(run_train("debug=limit", "data.val_size=0", f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}",
                    *QUIET))  # fmt: skip
    m, acc = metrics(tmp_path), read_events(tmp_path / "tensorboard")
    assert "val/acc_best" not in m and not any(t.startswith("val/") for t in acc.Tags()["scalars"])
    assert [e.value for e in acc.Scalars("hp/test_acc")] == [pytest.approx(m["test/acc"])]
    assert "hp/val_acc" not in acc.Tags()["scalars"]


def test_confusion_matrix_and_misclassified_match_the_predictions(tiny_mnist: Path, tmp_path: Path) -> None:
    """The callback's matrix counts exactly the model's test predictions; the grid holds the first mistakes."""
    torch.manual_seed(0)
    net, optimizer = {"_target_": "mnist_cnn.models.nets.SimpleCNN"}, {"_target_": "torch.optim.Adam"}
    model = MNISTClassifier(net=net, optimizer=optimizer)
    dm = MNISTDataModule(str(tiny_mnist), val_size=50, eval_batch_size=50)
    dashboards = TestDashboards(max_misclassified=20)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="tb", version=""),
                         callbacks=[dashboards], enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.test(model, datamodule=dm, verbose=False)
    images, labels = dm.datasets["test"]
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
    check(run_train("logger=mlflow", "debug=limit", "data.val_size=50", f"data.data_dir={tiny_mnist}",
                    f"paths.log_dir={tmp_path / 'logs'}", f"hydra.run.dir={tmp_path / 'run'}", *QUIET))  # fmt: skip
    m = metrics(tmp_path / "run")
    (run,) = [p.parent for p in (tmp_path / "logs" / "mlruns").glob("*/*/meta.yaml")]
    last = lambda name: float((run / "metrics" / name).read_text().split()[-2])  # noqa: E731  # "time value step"
    assert last("test/acc") == pytest.approx(m["test/acc"]) and last("hp/val_acc") == pytest.approx(m["val/acc_best"])
    assert (run / "params" / "model" / "optimizer" / "lr").read_text() == "0.001"
    assert {p.name for p in (run / "artifacts" / "test").glob("*.png")} == {"confusion_matrix.png", "misclassified.png"}


def test_mlflow_is_not_imported_unless_it_is_the_logger() -> None:
    code = ("import sys, mnist_cnn.train, mnist_cnn.callbacks.dashboards, mnist_cnn.config.sweep, "
            "lightning.pytorch.loggers; print('mlflow' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
