"""Test-only parts loaded into `python train.py` subprocesses (with tests/ on PYTHONPATH): `Pace` is named by
`_target_` in an override; `as_unprivileged` runs the entry point as a user that file modes apply to."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl


class Pace(pl.Callback):
    """Sleep after each training batch and record the epoch and global step, so a test can act mid-epoch."""

    def __init__(self, progress: str, seconds: float = 0.2) -> None:
        self.progress, self.seconds = Path(progress), seconds

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.progress.write_text(f"{trainer.current_epoch} {trainer.global_step}\n")
        time.sleep(self.seconds)


NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@functools.cache
def unprivileged_python() -> tuple[str, dict[str, str]]:
    """An interpreter `nobody` can run with no capability (the venv may live under /root), and the PYTHONPATH
    that finds our packages: the venv's own, or the system's of the same version with the venv's site-packages."""
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": os.pathsep.join([str(repo), sysconfig.get_paths()["purelib"]]), "HOME": tempfile.gettempdir()}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for exe in dict.fromkeys(
        [sys.executable, shutil.which(version), f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    ):
        if exe and Path(exe).exists():
            probe = subprocess.run(
                [*NOBODY, exe, "-c", "import lightning, torchvision, hydra, mnist_cnn.train"],
                env={**os.environ, **env},
                capture_output=True,
                timeout=300,
            )
            if probe.returncode == 0:
                return exe, env
    raise RuntimeError(f"no {version} that the user nobody can run without capabilities")


def as_unprivileged(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """`python train.py ARGS` as `nobody` with no capability (root ignores file modes)."""
    repo = Path(__file__).resolve().parents[1]
    env: dict[str, str] = {}
    if os.geteuid() != 0:  # an ordinary user already
        cmd = [sys.executable, "train.py", *args]
    elif shutil.which("setpriv") is None:
        raise RuntimeError("setpriv (util-linux) is needed to test permissions as a non-root user")
    else:
        exe, env = unprivileged_python()
        cmd = [*NOBODY, exe, "train.py", *args]
    return subprocess.run(
        cmd,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"},
    )
