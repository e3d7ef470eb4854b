"""A sweep job that submitit requeues (`hydra/launcher=slurm`, before a time limit) resumes instead of restarting.

No SLURM here: submitit's local executor runs the job with the same machinery (its signal handler, the
launcher's `checkpoint()`, the requeue, the resubmitted pickle); `tests/faults.py SignalAtStep` delivers
submitit's signal, SIGUSR2, mid-epoch, as SLURM would `signal_delay_s` before the time limit.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import QUIET, REPO, check, run_train

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

STEPS = 25  # 250 training images in batches of 10


def loss_steps(events: list[Path]) -> list[int]:
    """The steps of the `train/loss` points these TensorBoard event files hold."""
    steps = []
    for path in events:
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        steps += [e.step for e in acc.Scalars("train/loss")] if "train/loss" in acc.Tags()["scalars"] else []
    return sorted(steps)


def test_a_requeued_job_resumes_from_its_checkpoint(tiny_mnist: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    signal_at = "{_target_:tests.faults.SignalAtStep,step:30}"  # epoch 1 of 3, mid-epoch
    proc = check(run_train(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"+callbacks.requeue={signal_at}",
        "data.val_size=50", "data.batch_size=10", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu", "logger=tensorboard", f"data.data_dir={tiny_mnist}", f"hydra.sweep.dir={sweep}",
        *QUIET, env={"PYTHONPATH": str(REPO)},
    ))  # fmt: skip
    run = sweep / "0"
    submitit_log = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_log, submitit_log[-3000:]  # submitit did requeue it (then ran it again)
    saved = torch.load(run / "checkpoints" / "interrupted.ckpt", weights_only=True)
    stopped = saved["global_step"]
    assert stopped == 31 and saved["epoch"] == 1  # the batch after the signal
    log = (run / "train.log").read_text()  # both attempts, one run directory
    assert f"requeued by submitit: resuming from {run / 'checkpoints' / 'interrupted.ckpt'}" in log
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3 * STEPS
    by_process: dict[str, list[Path]] = {}  # events.out.tfevents.<time>.<host>.<pid>.<n>
    for path in (run / "tensorboard").glob("events.out.tfevents.*"):
        by_process.setdefault(path.name.split(".")[-2], []).append(path)
    first, second = sorted(by_process.values(), key=lambda files: min(p.stat().st_mtime for p in files))
    before, after = loss_steps(first), loss_steps(second)  # one TensorBoard run: both attempts, one folder
    assert max(before) < stopped == min(after) and after == list(range(stopped, 3 * STEPS))  # continued
    (row,) = csv.DictReader((sweep / "summary.csv").open())
    assert row["status"] == "completed" and Path(row["output_dir"]) == run, row
    assert "| completed |" in proc.stdout
