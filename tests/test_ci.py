"""CI cannot pass by doing less: .ci/run stops at the first failed step, runs the README's test command, then the
browser tests, then lint and types; the suite guard (tests/suite_guard.py) fails a CI run that skipped a test or
selected too few."""

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

# What .ci/run calls from .venv/bin, in order, as the stand-ins log it (`tool args`).
STEPS = (
    "pip install -c constraints.txt -e .[dev]",
    "python -m pytest",  # the README's test command
    "python -m pytest -m browser -v",
    "ruff check .",
    "ruff format --check .",
    "mypy",
)
# A stand-in tool logs `NAME ARGS (CI=$CI)` and fails when `NAME ARGS` is $FAIL.
FAKE_TOOL = '#!/bin/sh\necho "{name}${{*:+ $*}} (CI=$CI)" >> "$LOG"\n[ "$FAIL" != "{name}${{*:+ $*}}" ]\n'
# `python3 -m venv .venv`: a venv of stand-in tools.
FAKE_PYTHON3 = "#!/bin/sh\nmkdir -p .venv/bin\n" + "".join(
    f"cat > .venv/bin/{tool} <<'EOF'\n{FAKE_TOOL.format(name=tool)}EOF\nchmod +x .venv/bin/{tool}\n"
    for tool in ("pip", "python", "ruff", "mypy")
)


def run_ci(tmp_path: Path, fail: str = "", chromium: bool = True) -> tuple[int, list[str]]:
    """Run the real .ci/run in a copy of its folder, on a PATH of stand-ins (python3, apt-get, chromium if asked)
    and the few system tools it needs: the real Chromium stays out of sight."""
    repo, bin_dir, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "calls.log"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(REPO / ".ci" / "run", repo / ".ci" / "run")
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir", "chmod", "cat"):
        (bin_dir / tool).symlink_to(str(shutil.which(tool)))
    stand_ins = {"python3": FAKE_PYTHON3, "apt-get": FAKE_TOOL.format(name="apt-get")}
    for name, text in (stand_ins | ({"chromium": "#!/bin/sh\n"} if chromium else {})).items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": str(bin_dir), "LOG": str(log), "FAIL": fail, "MNIST_DATA_DIR": str(tmp_path)}
    bash = str(shutil.which("bash"))
    proc = subprocess.run([bash, str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


def steps(calls: list[str]) -> list[str]:
    return [c.rsplit(" (CI=", 1)[0] for c in calls]


@pytest.mark.parametrize("fail", ["", *STEPS])
def test_ci_runs_its_steps_in_order_and_stops_at_the_first_failure(tmp_path: Path, fail: str) -> None:
    code, calls = run_ci(tmp_path, fail)
    assert steps(calls) == (list(STEPS[: STEPS.index(fail) + 1]) if fail else list(STEPS)), calls
    assert (code != 0) == bool(fail)
    test_runs = [c for c in calls if c.startswith("python")]
    assert test_runs == [f"{s} (CI=1)" for s in steps(test_runs)], "both test runs with the guard switched on"


def test_chromium_is_installed_before_anything_else_when_missing(tmp_path: Path) -> None:
    code, calls = run_ci(tmp_path / "missing", chromium=False)
    assert code == 0 and steps(calls)[2:] == list(STEPS), calls
    update, install = steps(calls)[:2]
    assert update == "apt-get update" and install.startswith("apt-get install -y ") and "chromium" in install.split()
    code, calls = run_ci(tmp_path / "failed", fail="apt-get update", chromium=False)
    assert code != 0 and steps(calls) == ["apt-get update"], "no Chromium, no tests"
    assert steps(run_ci(tmp_path / "present")[1]) == list(STEPS), "installed already: apt-get is not called"


def test_ci_runs_the_readmes_install_and_test_commands_exactly() -> None:
    readme = (REPO / "README.md").read_text()
    (chain,) = [line for line in readme.splitlines() if line.strip().startswith("python3 -m venv") and "pytest" in line]
    commands = [c.strip() for c in chain.split("#")[0].split("&&")]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci_lines, f"README's {command!r} is not a line of .ci/run"
    assert commands[-1] == ".venv/bin/" + STEPS[1], "the README's test command is the default run, nothing added"


def guarded_project(tmp_path: Path, tests: str, min_tests: str) -> Path:
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
    (tmp_path / "tests" / "MIN_TESTS").write_text(f"{min_tests}\n# a comment, as the real one has\n")
    (tmp_path / "tests" / "test_some.py").write_text(f"import pytest\n\n{tests}")
    return tmp_path


def pytest_in(project: Path, *args: str, ci: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env |= {"PYTHONPATH": str(REPO / "tests"), **({"CI": "1"} if ci else {})}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)


TWO_AND_A_GPU = "def test_a(): pass\n\ndef test_b(): pass\n\n@pytest.mark.gpu\ndef test_c(): pass\n"
A_BROWSER = "\n@pytest.mark.browser\ndef test_e(): pass\n"
A_SKIP = "\ndef test_d(): pytest.skip('optional thing missing')\n"
A_BROWSER_SKIP = "\n@pytest.mark.browser\ndef test_f(): pytest.skip('no Chromium')\n"


def test_guard_passes_the_full_suite_with_gpu_and_browser_tests_deselected(tmp_path: Path) -> None:
    proc = pytest_in(guarded_project(tmp_path, TWO_AND_A_GPU + A_BROWSER, min_tests="2 1"))
    assert proc.returncode == 0 and "2 passed, 2 deselected" in proc.stdout, proc.stdout


def test_guard_fails_ci_on_a_skip_or_on_too_few_tests(tmp_path: Path) -> None:
    skipping = pytest_in(guarded_project(tmp_path / "skip", TWO_AND_A_GPU + A_SKIP, min_tests="2"))
    assert skipping.returncode == 1 and "skipped under CI: tests/test_some.py::test_d" in skipping.stdout
    assert "optional thing missing" in skipping.stdout
    too_few = pytest_in(guarded_project(tmp_path / "few", TWO_AND_A_GPU, min_tests="3"))
    assert too_few.returncode == 1 and "only 2 tests selected, tests/MIN_TESTS expects at least 3" in too_few.stdout


def test_guard_runs_the_browser_tests_and_fails_ci_when_they_skip_or_are_missing(tmp_path: Path) -> None:
    ran = pytest_in(guarded_project(tmp_path / "ok", TWO_AND_A_GPU + A_BROWSER, min_tests="2 1"), "-m", "browser")
    assert ran.returncode == 0 and "1 passed, 3 deselected" in ran.stdout, ran.stdout
    skipped = pytest_in(guarded_project(tmp_path / "skip", TWO_AND_A_GPU + A_BROWSER + A_BROWSER_SKIP, "2 1"),
                        "-m", "browser")  # fmt: skip
    assert skipped.returncode == 1 and "skipped under CI: tests/test_some.py::test_f" in skipped.stdout
    assert "no Chromium" in skipped.stdout
    few = pytest_in(guarded_project(tmp_path / "few", TWO_AND_A_GPU + A_BROWSER, min_tests="2 2"), "-m", "browser")
    assert few.returncode == 1 and "only 1 browser tests selected, tests/MIN_TESTS expects at least 2" in few.stdout
    none = pytest_in(guarded_project(tmp_path / "none", TWO_AND_A_GPU, min_tests="2"), "-m", "browser")
    assert none.returncode == 1 and "only 0 browser tests selected, tests/MIN_TESTS expects at least 1" in none.stdout


def test_guard_leaves_partial_and_local_runs_alone(tmp_path: Path) -> None:
    project = guarded_project(tmp_path, TWO_AND_A_GPU + A_SKIP + A_BROWSER_SKIP, min_tests="99 99")
    assert pytest_in(project, ci=False).returncode == 0  # a developer's run: skips are reported by -ra only
    assert pytest_in(project, "-m", "browser", ci=False).returncode == 0
    assert pytest_in(project, "-k", "test_a").returncode == 0
    assert pytest_in(project, "tests/test_some.py").returncode == 0
    gpu = pytest_in(project, "-m", "gpu")  # a GPU machine's run; without CUDA a clear skip
    if gpu.stdout.count("torch.cuda.is_available() is False"):
        assert gpu.returncode == 0 and "1 skipped" in gpu.stdout and "marked gpu: needs a CUDA GPU" in gpu.stdout
    else:
        assert gpu.returncode == 0 and "1 passed" in gpu.stdout, gpu.stdout
