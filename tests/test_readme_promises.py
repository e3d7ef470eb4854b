"""README promises no other test runs: the debug presets `overfit` and `profiler`, and the test dashboards
under DDP (the confusion matrix counts every test image once, summed over the ranks)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import QUIET, check, metrics, real_data_dir, run_train
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_cnn.callbacks.figures import confusion_matrix_image


def test_overfit_preset_drives_the_training_loss_to_zero(tmp_path: Path) -> None:
    """`debug=overfit`: 3 fixed batches of real MNIST, 30 epochs; the loss on them must reach ~0."""
    check(run_train("debug=overfit", "logger=csv", "trainer.log_every_n_steps=1", "trainer.check_val_every_n_epoch=30",
                    "trainer.precision=32-true", f"data.data_dir={real_data_dir()}", f"hydra.run.dir={tmp_path}",
                    *QUIET))  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    losses = [(int(r["step"]), float(r["train/loss"])) for r in rows if r["train/loss"]]
    assert [s for s, _ in losses] == list(range(90))  # 30 epochs x the same 3 batches
    assert losses[0][1] > 1.5 and max(v for _, v in losses[-3:]) < 0.02, losses[::10]
    assert [float(r["train/acc"]) for r in rows if r["train/acc"]][-1] == 1.0


def test_profiler_preset_reports_where_the_epoch_went(tiny_mnist: Path, tmp_path: Path) -> None:
    """`debug=profiler`: Lightning's simple profiler, its report in the run's log (250 images: 4 batches)."""
    check(run_train("debug=profiler", "data.val_size=50", "logger=none", f"data.data_dir={tiny_mnist}",
                    f"hydra.run.dir={tmp_path}", *QUIET))  # fmt: skip
    log = (tmp_path / "debug.log").read_text()
    assert "FIT Profiler Report" in log and "TEST Profiler Report" in log
    (calls,) = {int(n) for n in re.findall(r"\|\s+run_training_batch\s+\|\s+[\d.]+\s+\|\s+(\d+)\s+\|", log)}
    assert calls == 4


def test_dashboards_under_ddp_count_every_test_image_once(tiny_mnist: Path, tmp_path: Path) -> None:
    """2 CPU processes, 60 test images each: every rank's matrix, and the TensorBoard image, hold all 120."""
    record = f"+callbacks.record={{_target_: tests.inject.RecordCounts, folder: {tmp_path / 'counts'}}}"
    check(run_train("trainer=ddp_cpu", "trainer.devices=2", "debug=limit", "data.val_size=50", record,
                    f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path / 'run'}", *QUIET))  # fmt: skip
    counts = [np.array(json.loads((tmp_path / "counts" / f"counts_rank{r}.json").read_text())) for r in (0, 1)]
    assert np.array_equal(counts[0], counts[1]) and counts[0].sum() == 120 == metrics(tmp_path / "run")["n_test"]
    assert counts[0].sum(axis=1).tolist() == [12] * 10  # tiny_mnist's labels: i % 10
    assert np.trace(counts[0]) / 120 == pytest.approx(metrics(tmp_path / "run")["test/acc"], abs=1e-6)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (tag,) = [t for t in events.Tags()["images"] if "confusion" in t]
    logged = np.asarray(Image.open(io.BytesIO(events.Images(tag)[-1].encoded_image_string)).convert("RGB"))
    assert np.array_equal(logged, confusion_matrix_image(counts[0], title="test set"))
