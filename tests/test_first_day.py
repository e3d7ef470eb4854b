"""What a newcomer meets first: a test run without MNIST, and the lines every run prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import QUIET, REPO, check, run_train

NOISE = (
    "litlogger",  # Lightning's advertisement
    "is not supported by the model summary",  # bf16: the size estimate, not the counts
    "across ranks is zero",  # no validation split: no validation loop at all
    "`weights_only` was not set",  # our checkpoint IO loads weights-only anyway
)


def test_a_run_prints_no_line_a_user_can_do_nothing_about(tiny_mnist: Path, tmp_path: Path) -> None:
    proc = check(run_train("debug=limit", "data.val_size=0", "trainer.precision=bf16-mixed", "logger=none",
                           f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}", *QUIET))  # fmt: skip
    output = proc.stdout + proc.stderr
    assert "done in" in output and not [n for n in NOISE if n in output]


def test_the_tests_without_mnist_stop_at_once_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "MNIST_DATA_DIR": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_net.py"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "the tests need the real MNIST" in line]
    assert lines and all("set MNIST_DATA_DIR" in line for line in lines)
    assert " passed" not in proc.stdout and " failed" not in proc.stdout  # nothing ran
