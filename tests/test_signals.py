"""Faults as they happen to real `python train.py` processes: SIGTERM or Ctrl-C mid-epoch, kill -9 mid-epoch,
a full disk half-way through a checkpoint, a checkpoint folder the user cannot write. Nothing saved is lost, and
a resumed run ends bit for bit as the uninterrupted one."""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import QUIET, REPO, metrics
from inject import as_unprivileged

from mnist_cnn.callbacks.checkpoints import SafeCheckpointIO

ENV = {"PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# 250 training images in batches of 10: 25 steps an epoch, 2 epochs; last.ckpt also every 5 steps (a short
# stand-in for callbacks.last_checkpoint.train_time_interval, 30 minutes by default).
RUN = (
    "data.val_size=50",
    "data.batch_size=10",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "seed=7",
    "trainer.precision=32-true",
    "logger=csv",
    *QUIET,
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.last_checkpoint.train_time_interval=null",
    "+callbacks.last_checkpoint.every_n_train_steps=5",
)


def comparable(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if not k.startswith("perf/") and k not in ("best_ckpt", "output_dir")}


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=900,
    )


def stop_mid_epoch(args: list[str], out: Path, sig: signal.Signals, at_step: int) -> subprocess.CompletedProcess:
    """Start training, send `sig` once it is `at_step` steps into its first epoch of 25, wait for it to end."""
    progress = out / "progress"
    pace = f"+callbacks.pace={{_target_: inject.Pace, progress: {progress}}}"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args, pace],
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        epoch_step = progress.read_text().split() if progress.exists() else []
        if len(epoch_step) == 2 and epoch_step[0] == "0" and int(epoch_step[1]) >= at_step:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: Path) -> dict[str, Any]:
    """The uninterrupted run and the stopped ones, started together; then the resumes."""
    out = tmp_path_factory.mktemp("signals")
    common = [*RUN, f"data.data_dir={tiny_mnist}"]
    jobs = {
        "whole": lambda: train(*common, f"hydra.run.dir={out / 'whole'}"),
        "term": lambda: stop_mid_epoch([*common, f"hydra.run.dir={out / 'term'}"], out / "term", signal.SIGTERM, 8),
        "int": lambda: stop_mid_epoch([*common, f"hydra.run.dir={out / 'int'}"], out / "int", signal.SIGINT, 3),
        "kill": lambda: stop_mid_epoch([*common, f"hydra.run.dir={out / 'kill'}"], out / "kill", signal.SIGKILL, 12),
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results: dict[str, Any] = dict(zip(jobs, pool.map(lambda job: job(), jobs.values()), strict=True))
    results["dirs"] = {name: out / name for name in jobs}
    lines = [x for x in results["term"].stderr.splitlines() if "resume with: " in x]
    if lines:
        resume = shlex.split(lines[0].split("resume with: ", 1)[1])
        assert resume[:2] == ["python", "train.py"]
        results["term_resumed"] = train(*resume[2:])
    last = out / "kill" / "checkpoints" / "last.ckpt"
    results["kill_resumed"] = train(*common, f"ckpt_path={last}", f"hydra.run.dir={out / 'kill'}")
    return results


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def same_weights(x: Path, y: Path) -> bool:
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in (x, y))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_says_how_to_resume_and_the_resumed_run_ends_bit_for_bit(runs: dict[str, Any]) -> None:
    whole, term, proc = runs["dirs"]["whole"], runs["dirs"]["term"], runs["term"]
    ok(runs["whole"])
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    ckpt = term / "checkpoints" / "interrupted.ckpt"
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("interrupted by SIGTERM")]
    found = re.fullmatch(rf"interrupted by SIGTERM at epoch 0, step (\d+); saved {ckpt}; resume with: (.*)", line)
    assert found and 8 <= int(found.group(1)) < 25, line  # mid-epoch
    assert found.group(2).endswith(f"ckpt_path={ckpt} hydra.run.dir={term}")
    assert torch.load(ckpt, weights_only=True)["global_step"] == int(found.group(1))
    assert not (term / "metrics.json").exists() or "term_resumed" in runs  # it neither tested nor wrote a result
    ok(runs["term_resumed"])
    assert comparable(metrics(term)) == comparable(metrics(whole))
    for name in ("epoch_000.ckpt", "epoch_001.ckpt"):  # the interrupted epoch and the one after it
        assert same_weights(term / "checkpoints" / name, whole / "checkpoints" / name), name


def test_ctrl_c_stops_at_the_batch_end_with_a_checkpoint(runs: dict[str, Any]) -> None:
    proc, ckpt = runs["int"], runs["dirs"]["int"] / "checkpoints" / "interrupted.ckpt"
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "interrupted by SIGINT" in proc.stderr and torch.load(ckpt, weights_only=True)["global_step"] >= 3


def test_a_kill_9_mid_epoch_loses_only_the_steps_since_last_ckpt(runs: dict[str, Any]) -> None:
    """last.ckpt every N steps (train_time_interval in real runs): the resumed run ends as the uninterrupted one."""
    whole, kill = runs["dirs"]["whole"], runs["dirs"]["kill"]
    assert runs["kill"].returncode == -signal.SIGKILL
    ok(runs["kill_resumed"])
    assert comparable(metrics(kill)) == comparable(metrics(whole))
    assert same_weights(kill / "checkpoints" / "epoch_001.ckpt", whole / "checkpoints" / "epoch_001.ckpt")
    assert not list((kill / "checkpoints").glob(".*.tmp"))  # the kill left no half-written file behind


def test_a_full_disk_mid_write_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = SafeCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    real_save = torch.save

    def full_disk(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert io.load_checkpoint(path)["epoch"] == 0 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_an_unwritable_checkpoint_folder_is_one_line(tiny_mnist: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="mnist-perm-"))  # pytest's own tmp folders are closed to other users
    try:
        shutil.copytree(tiny_mnist, root / "data")
        (run := root / "run" / "checkpoints").mkdir(parents=True)
        (root / "home").mkdir()
        for folder, subfolders, _ in os.walk(root):
            for name in (".", *subfolders):
                Path(folder, name).chmod(0o777)
        run.chmod(0o555)  # the run folder is writable, its checkpoints/ is not
        proc = as_unprivileged(
            [
                "debug=limit",
                "data.val_size=50",
                "logger=none",
                f"data.data_dir={root / 'data'}",
                f"hydra.run.dir={run.parent}",
            ],
            root / "home",
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: cannot write {run}") and "Permission denied" in line
