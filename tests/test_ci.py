"""CI cannot pass by doing less: .ci/run stops at the first failed step, runs the README's test command, and
the suite guard (tests/suite_guard.py) fails a CI run that skipped a test or selected too few."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

STEPS = ("pip", "python", "ruff", "ruff", "mypy")  # what .ci/run calls from .venv/bin, in order (ruff: check, format)
FAKE_PYTHON3 = """#!/bin/sh
# `python3 -m venv .venv`: a venv whose tools log their call (with $CI) and fail when named in $FAIL
mkdir -p .venv/bin
for tool in pip python ruff mypy; do
  printf '#!/bin/sh\\necho "%s CI=$CI $*" >> "$LOG"\\n[ "$FAIL" != "%s" ]\\n' "$tool" "$tool" > .venv/bin/$tool
  chmod +x .venv/bin/$tool
done
"""


def run_ci(tmp_path: Path, fail: str) -> tuple[int, list[str]]:
    """Run the real .ci/run in a copy of its folder, with stand-ins for python3, chromium and the venv tools."""
    repo, bin_dir, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls.log"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    bin_dir.mkdir()
    for name, text in (("python3", FAKE_PYTHON3), ("chromium", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "FAIL": fail, "MNIST_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("fail", ["", *dict.fromkeys(STEPS)])
def test_ci_fails_at_the_first_failed_step_and_runs_nothing_after_it(tmp_path: Path, fail: str) -> None:
    code, calls = run_ci(tmp_path, fail)
    ran = [c.split()[0] for c in calls]
    assert ran == (list(STEPS[: STEPS.index(fail) + 1]) if fail else list(STEPS)), calls
    assert (code != 0) == bool(fail)
    if "python" in ran:  # the README's test command, exactly, with the guard switched on
        assert calls[ran.index("python")] == "python CI=1 -m pytest"


def test_ci_runs_the_readmes_install_and_test_commands() -> None:
    readme = (REPO / "README.md").read_text()
    (chain,) = [line for line in readme.splitlines() if line.strip().startswith("python3 -m venv") and "pytest" in line]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in chain.split("#")[0].split("&&"):
        assert command.strip() in ci_lines, f"README's {command.strip()!r} is not a line of .ci/run"


def guarded_project(tmp_path: Path, tests: str, min_tests: int) -> Path:
    """A project with this repo's pytest options and the guard, its own tests and tests/MIN_TESTS."""
    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = ini["addopts"] if isinstance(ini["addopts"], str) else shlex.join(ini["addopts"])
    (tmp_path / "tests").mkdir(parents=True)
    (tmp_path / "pytest.ini").write_text(
        f"[pytest]\ntestpaths = tests\naddopts = {addopts}\nmarkers =\n" + "".join(f"  {m}\n" for m in ini["markers"])
    )
    (tmp_path / "tests" / "conftest.py").write_text(
        "from suite_guard import pytest_runtest_logreport, pytest_runtest_setup, pytest_sessionfinish  # noqa\n"
    )
    (tmp_path / "tests" / "MIN_TESTS").write_text(f"{min_tests}\n")
    (tmp_path / "tests" / "test_some.py").write_text(f"import pytest\n\n{tests}")
    return tmp_path


def pytest_in(project: Path, *args: str, ci: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env |= {"PYTHONPATH": str(REPO / "tests"), **({"CI": "1"} if ci else {})}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)


TWO_AND_A_GPU = "def test_a(): pass\n\ndef test_b(): pass\n\n@pytest.mark.gpu\ndef test_c(): pass\n"
A_SKIP = "\ndef test_d(): pytest.skip('optional thing missing')\n"


def test_guard_passes_the_full_suite_with_gpu_tests_deselected(tmp_path: Path) -> None:
    proc = pytest_in(guarded_project(tmp_path, TWO_AND_A_GPU, min_tests=2))
    assert proc.returncode == 0 and "2 passed, 1 deselected" in proc.stdout, proc.stdout


def test_guard_fails_ci_on_a_skip_or_on_too_few_tests(tmp_path: Path) -> None:
    skipping = pytest_in(guarded_project(tmp_path / "skip", TWO_AND_A_GPU + A_SKIP, min_tests=2))
    assert skipping.returncode == 1 and "skipped under CI: tests/test_some.py::test_d" in skipping.stdout
    assert "optional thing missing" in skipping.stdout
    too_few = pytest_in(guarded_project(tmp_path / "few", TWO_AND_A_GPU, min_tests=3))
    assert too_few.returncode == 1 and "only 2 tests selected, tests/MIN_TESTS expects at least 3" in too_few.stdout


def test_guard_leaves_partial_and_local_runs_alone(tmp_path: Path) -> None:
    project = guarded_project(tmp_path, TWO_AND_A_GPU + A_SKIP, min_tests=99)
    assert pytest_in(project, ci=False).returncode == 0  # a developer's run: skips are reported by -ra only
    assert pytest_in(project, "-k", "test_a").returncode == 0
    assert pytest_in(project, "tests/test_some.py").returncode == 0
    gpu = pytest_in(project, "-m", "gpu")  # a GPU machine's run; without CUDA a clear skip
    if gpu.stdout.count("torch.cuda.is_available() is False"):
        assert gpu.returncode == 0 and "1 skipped" in gpu.stdout and "marked gpu: needs a CUDA GPU" in gpu.stdout
    else:
        assert gpu.returncode == 0 and "1 passed" in gpu.stdout, gpu.stdout
