"""A finished run exits promptly, whatever threads the libraries left behind (torch.compile's worker pools)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import QUIET, REPO


def test_a_run_that_leaves_an_idle_thread_pool_still_exits(tiny_mnist: Path, tmp_path: Path) -> None:
    """The fast exit (no module teardown) runs the executors' shutdown hooks before joining their threads."""
    args = ["debug=fdr", "data.val_size=50", "logger=none", "+callbacks.pool={_target_:inject.IdlePool}",
            f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}", *QUIET]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip  # the run itself takes ~5 s
    except subprocess.TimeoutExpired as err:
        done = "done in" in str(err.stdout or b"") + str(err.stderr or b"")
        raise AssertionError(f"no exit within 120 s (summary printed: {done})") from None
    assert proc.returncode == 0 and "done in" in proc.stdout + proc.stderr
