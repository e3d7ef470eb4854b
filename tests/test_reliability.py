# ruff: noqa: E501  (expected messages are written out in full)
"""Interruption, reproducibility, checkpoint safety, full disks, unwritable folders, divergence: end to end.

Real `python train.py` processes on the tiny IDX data, started together (the machine's cores are few), with
faults injected the way they happen: SIGTERM mid-epoch, ENOSPC half-way through a checkpoint write, a NaN
loss, and folders an unprivileged user cannot read or write (CI runs as root, which ignores file modes).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QUIET, REPO, metrics
from inject import as_unprivileged, world_readable_dir

from mnist_cnn.models.module import MNISTClassifier

ENV = {"PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# 250 training images in batches of 10: 25 steps an epoch, 2 epochs; every epoch's checkpoint is kept.
RUN = (
    "data.val_size=50",
    "data.batch_size=10",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "seed=7",
    "logger=csv",
    *QUIET,
    "callbacks.model_checkpoint.save_top_k=-1",
)
QUICK = ("debug=limit", "data.val_size=50", "logger=none", "trainer.accelerator=cpu")
ENOSPC = "import inject; inject.disk_full_on_second('last.ckpt'); inject.run_main()"
NAN = "import inject; inject.nan_loss_from(step=3); inject.run_main()"


def comparable(m: dict[str, Any]) -> dict[str, Any]:
    """metrics.json without what legitimately differs between runs: timings and paths."""
    return {
        k: v for k, v in m.items() if not (k.endswith("_s") or k.startswith("perf/") or k.endswith(("_ckpt", "_dir")))
    }


def run(args: list[str], out: Path, code: str | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", code] if code else [sys.executable, "train.py"]
    return subprocess.run(head + args, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=900)


def interrupt_mid_epoch(args: list[str], out: Path) -> subprocess.CompletedProcess:
    """Start training, SIGTERM it once it is 8 steps into its first epoch of 25, wait for it to exit."""
    progress, log = out / "progress", out / "interrupted.log"
    pace = f"+callbacks.pace={{_target_: inject.Pace, progress: {progress}}}"
    with log.open("w") as stdout, (out / "interrupted.err").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *args, pace],
            cwd=REPO,
            env={**os.environ, **ENV},
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            epoch_step = progress.read_text().split() if progress.exists() else []
            if len(epoch_step) == 2 and epoch_step[0] == "0" and int(epoch_step[1]) >= 8:
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        proc.wait(timeout=600)
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, log.read_text(), (out / "interrupted.err").read_text()
    )


@pytest.fixture(scope="module")
def world_readable() -> Iterator[Path]:
    with world_readable_dir() as root:
        yield root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path, world_readable: Path) -> dict[str, Any]:
    """All the training processes of this module, started together; the resume once its interruption is over."""
    out = tmp_path_factory.mktemp("reliability")
    data = f"data.data_dir={tiny_mnist}"
    nobody_run = world_readable / "nobody_run"
    (nobody_run / "checkpoints").mkdir(parents=True)
    (nobody_run / "checkpoints").chmod(0o555)  # the run folder is writable, its checkpoints/ is not
    nobody_run.chmod(0o777)
    jobs = {
        "a": lambda: run([*RUN, data, f"hydra.run.dir={out / 'a'}"], out),
        "b": lambda: run([*RUN, data, f"hydra.run.dir={out / 'b'}"], out),
        "interrupted": lambda: interrupt_mid_epoch([*RUN, data, f"hydra.run.dir={out / 'i'}"], out),
        "disk_full": lambda: run(
            [*QUICK, data, "callbacks.model_checkpoint.save_top_k=-1", f"hydra.run.dir={out / 'full'}"],
            out,
            code=ENOSPC,
        ),
        "nan": lambda: run([*QUICK, data, "trainer.detect_anomaly=false", f"hydra.run.dir={out / 'nan'}"], out, NAN),
        "nobody_ckpt": lambda: as_unprivileged(
            [*QUICK, f"data.data_dir={world_readable / 'tiny'}", f"hydra.run.dir={nobody_run}"], world_readable / "home"
        ),
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        results: dict[str, Any] = {name: f.result() for name, f in futures.items()}
    results["dirs"] = {
        "a": out / "a",
        "b": out / "b",
        "i": out / "i",
        "full": out / "full",
        "nan": out / "nan",
        "nobody": nobody_run,
    }
    line = [x for x in results["interrupted"].stderr.splitlines() if x.startswith("error: interrupted")]
    if line and "resume with: " in line[0]:
        resume = shlex.split(line[0].split("resume with: ", 1)[1])
        assert resume[:2] == ["python", "train.py"]
        results["resumed"] = run(resume[2:], out)
    return results


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["state_dict"]


def same_weights(x: Path, y: Path) -> bool:
    a, b = weights(x), weights(y)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_twice_gives_bit_identical_metrics(runs: dict[str, Any]) -> None:
    ok(runs["a"]), ok(runs["b"])
    a, b = runs["dirs"]["a"], runs["dirs"]["b"]
    assert comparable(metrics(a)) == comparable(metrics(b))
    assert {"test/acc", "test/loss", "n_test", "val/acc_best"} <= set(comparable(metrics(a)))
    for name in ("epoch_000.ckpt", "epoch_001.ckpt"):
        assert same_weights(a / "checkpoints" / name, b / "checkpoints" / name), name


def test_sigterm_mid_epoch_saves_and_the_resumed_run_ends_exactly_as_an_uninterrupted_one(runs: dict) -> None:
    a, i, proc = runs["dirs"]["a"], runs["dirs"]["i"], runs["interrupted"]
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    (line,) = error_lines(proc)
    ckpt = i / "checkpoints" / "interrupted.ckpt"
    found = re.fullmatch(
        rf"error: interrupted by SIGTERM at epoch 0, step (\d+); saved {ckpt}; resume with: (.*)", line
    )
    assert found and 8 <= int(found.group(1)) < 25, line  # mid-epoch
    assert found.group(2).endswith(f"ckpt_path={ckpt} hydra.run.dir={i}")
    saved = torch.load(ckpt, weights_only=True)  # plain data, like every checkpoint we write
    assert saved["global_step"] == int(found.group(1))
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 0, "batches": saved["global_step"]}
    ]
    assert {"torch", "numpy", "python"} <= set(saved["callbacks"]["Interruptible"]["rng"])
    assert "done in" not in proc.stdout  # the interrupted run neither tested nor wrote a result
    ok(runs["resumed"])
    assert comparable(metrics(i)) == comparable(metrics(a))
    for name in ("epoch_000.ckpt", "epoch_001.ckpt"):  # the interrupted epoch and the one after it
        assert same_weights(i / "checkpoints" / name, a / "checkpoints" / name), name
    assert torch.load(i / "checkpoints" / "epoch_001.ckpt", weights_only=True)["global_step"] == 50


def test_our_checkpoints_load_weights_only(runs: dict[str, Any]) -> None:
    ckpts = [
        *sorted((runs["dirs"]["a"] / "checkpoints").glob("*.ckpt")),
        runs["dirs"]["i"] / "checkpoints" / "interrupted.ckpt",
    ]
    assert len(ckpts) >= 4
    for ckpt in ckpts:
        torch.load(ckpt, weights_only=True)
    model = MNISTClassifier.load_from_checkpoint(ckpts[0], map_location="cpu", weights_only=True)
    assert sum(p.numel() for p in model.net.parameters()) > 0


def test_disk_full_mid_write_keeps_the_last_good_checkpoint(runs: dict[str, Any]) -> None:
    proc, ckpts = runs["disk_full"], runs["dirs"]["full"] / "checkpoints"
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"error: cannot write checkpoint {ckpts / 'last.ckpt'}: No space left on device; checkpoints saved before are unchanged"
    ]
    last = torch.load(ckpts / "last.ckpt", weights_only=True)  # whole, and still the first epoch's
    first_epoch = torch.load(ckpts / "epoch_000.ckpt", weights_only=True)
    assert last["epoch"] == 0 and last["global_step"] == first_epoch["global_step"] > 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"]  # no temp file


def test_nan_loss_stops_the_run_before_a_nan_model_is_saved(runs: dict[str, Any]) -> None:
    proc = runs["nan"]
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "error: training diverged at epoch 0, step 4: the training loss is not finite (nan or inf); lower model.optimizer.lr (now 0.001) or set trainer.gradient_clip_val; checkpoints saved before are kept"
    ]
    ckpts = runs["dirs"]["nan"] / "checkpoints"
    assert not ckpts.exists() or not list(ckpts.iterdir())


def test_unwritable_checkpoint_folder_is_one_line(runs: dict[str, Any]) -> None:
    proc, run_dir = runs["nobody_ckpt"], runs["dirs"]["nobody"]
    assert proc.returncode == 2, proc.stderr[-3000:]
    target = run_dir / "checkpoints" / "epoch_000.ckpt"
    assert error_lines(proc) == [
        f"error: cannot write checkpoint {target}: Permission denied; checkpoints saved before are unchanged"
    ]
    assert list(run_dir.glob("*.log")) and not list((run_dir / "checkpoints").iterdir())
