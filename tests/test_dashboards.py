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


KNOBS = {
    "model/net/name",
    "model/optimizer/name",
    "model/optimizer/lr",
    "model/scheduler/name",
    "model/label_smoothing",
    "model/augment",
    "data/batch_size",
    "trainer/max_epochs",
    "trainer/max_steps",
    "trainer/precision",
    "seed",
}


def test_hparams_table_holds_the_knobs_and_the_swept_override_not_the_whole_config(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """The HParams view gets ~10 knobs plus what each job overrode: its metric columns stay on screen."""
    sweep = tmp_path / "sweep"
    check(run_train("-m", "+model.label_smoothing=0.0,0.1", "debug=limit", "data.val_size=50", "trainer.max_epochs=1",
                    f"data.data_dir={tiny_mnist}", f"hydra.sweep.dir={sweep}", *QUIET))  # fmt: skip
    for job, smoothing in (("0", 0.0), ("1", 0.1)):
        hp = read_events(sweep / job / "tensorboard").PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
        keys = set(start.hparams)
        overridden = {"model/label_smoothing", "debug", "data/val_size", "trainer/max_epochs", "callbacks/progress_bar",
                      "trainer/enable_progress_bar"}  # fmt: skip
        assert len(keys) <= 25 and keys - overridden <= KNOBS, keys  # nothing the job did not choose
        assert start.hparams["model/label_smoothing"].number_value == pytest.approx(smoothing)
        assert start.hparams["model/net/name"].string_value == "SimpleCNN"
        assert start.hparams["model/optimizer/lr"].number_value == pytest.approx(1e-3)
        assert "data/data_dir" not in keys  # a path, not a hyperparameter


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
