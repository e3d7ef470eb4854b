"""Test-only helpers loaded into `python train.py` subprocesses (with tests/ on PYTHONPATH).

`Pace` is named by `_target_` in an override; `python -c "import inject; inject.FAULT(); inject.run_main()"`
injects a fault (a full disk, a NaN loss) into the real entry point, then runs it with the given overrides.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class Pace(pl.Callback):
    """Sleep after each training batch and record the global step, so a test can signal mid-epoch."""

    def __init__(self, progress: str, seconds: float = 0.2) -> None:
        self.progress, self.seconds = Path(progress), seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.progress.write_text(f"{trainer.current_epoch} {trainer.global_step}\n")
        time.sleep(self.seconds)


class RecordCounts(pl.Callback):
    """After testing, write this rank's TestDashboards `counts` (its confusion matrix) to `folder`."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from mnist_cnn.callbacks.dashboards import TestDashboards

        (dashboards,) = [c for c in trainer.callbacks if isinstance(c, TestDashboards)]  # type: ignore[attr-defined]
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"counts_rank{trainer.global_rank}.json").write_text(str(dashboards.counts.tolist()))


class GcProbe(pl.Callback):
    """At the first training batch, write the collector's state (`enabled frozen-objects`) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, *args: Any) -> None:
        import gc

        if not self.path.exists():
            self.path.write_text(f"{gc.isenabled()} {gc.get_freeze_count()}\n")


def run_main() -> None:
    """`python train.py ARGS` in this process, ARGS being this process's own arguments."""
    import runpy
    import sys

    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")


def disk_full_on_second(name: str) -> None:
    """The second write of checkpoint `name` fails half-way with ENOSPC, as on a disk that just filled up."""
    import errno
    import os

    import torch

    real_save, saves = torch.save, []

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if name in str(getattr(f, "name", "")):
            saves.append(f.name)
            if len(saves) == 2:
                f.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    torch.save = save


def nan_loss_from(step: int) -> None:
    """From the `step`-th training step on (1-based), the cross-entropy the module computes is NaN."""
    import torch
    import torch.nn.functional as F

    real, calls = F.cross_entropy, []

    def cross_entropy(*args: Any, **kwargs: Any) -> torch.Tensor:
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():  # training, not validation or test
            calls.append(1)
            if len(calls) >= step:
                return loss * float("nan")
        return loss

    F.cross_entropy = cross_entropy


@contextmanager
def world_readable_dir() -> Iterator[Path]:
    """A folder with the tiny data set that an unprivileged user can traverse (pytest's tmp folders are root's)."""
    from conftest import make_tiny_mnist

    root = Path(tempfile.mkdtemp(prefix="mnist-reliability-"))
    try:
        root.chmod(0o755)
        make_tiny_mnist(root / "tiny")
        (root / "home").mkdir()
        (root / "home").chmod(0o777)  # HOME of the unprivileged user: caches may go there
        yield root
    finally:
        for folder, subfolders, _ in os.walk(root):  # tests lock folders (mode 000): open them to delete them
            for name in subfolders:
                Path(folder, name).chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@functools.cache
def unprivileged_python() -> tuple[str, dict[str, str]]:
    """An interpreter `nobody` can run with no capability at all, and the PYTHONPATH that finds our packages.

    tests/test_train.py `as_nobody` lends the user a capability to read root's files (the venv's interpreter
    may live under /root), which also lets it read every "unreadable" file; this finds an interpreter of the
    same version that needs no such help: the venv's own, or the system's with the venv's site-packages.
    """
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": os.pathsep.join([str(repo), sysconfig.get_paths()["purelib"]]), "HOME": tempfile.gettempdir()}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in dict.fromkeys(
        [sys.executable, shutil.which(version), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    ):
        if exe and Path(exe).exists():
            probe = subprocess.run([*NOBODY, exe, "-c", "import lightning, torchvision, hydra, mnist_cnn.train"],
                                   env={**os.environ, **env}, capture_output=True, timeout=300)  # fmt: skip
            if probe.returncode == 0:
                return exe, env
    raise RuntimeError(f"no {version} that the user nobody can run without capabilities")


def as_unprivileged(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as a user that file modes apply to: `nobody` with no capability under root."""
    repo = Path(__file__).resolve().parents[1]
    env: dict[str, str] = {}
    if os.geteuid() != 0:  # an ordinary user already
        cmd = [sys.executable, "train.py", *args]
    elif shutil.which("setpriv") is None:
        raise RuntimeError("setpriv (util-linux) is needed to test permissions as a non-root user")
    else:
        exe, env = unprivileged_python()
        cmd = [*NOBODY, exe, "train.py", *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"})  # fmt: skip


class IdlePool(pl.Callback):
    """Leaves a thread pool with an idle worker thread at exit, as torch.compile's worker pools do."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1)  # never shut down: the interpreter's exit hook does it
        self.pool.submit(int).result()
