"""pytest hooks (imported by conftest.py) so that CI cannot pass by running less than the suite.

Under CI (`$CI` set, as .ci/run and CI services do), the full default run (`python -m pytest`, no paths, no
-k, no -m of its own) fails when any test is skipped or when fewer tests were selected than tests/MIN_TESTS
says: an import that quietly turns into a skip, or a module that stops being collected, is a failure.
`gpu`-marked tests are deselected by pyproject's addopts (`-m "not gpu"`) and run with `-m gpu` on a GPU
machine, where a missing GPU skips them with a reason.
"""

from __future__ import annotations

import os

import pytest

DEFAULT_MARKEXPR = "not gpu"  # pyproject.toml addopts
_skipped: list[str] = []


def min_tests(config: pytest.Config) -> int:
    """The floor on the number of tests the full CPU suite selects (first word of tests/MIN_TESTS)."""
    return int((config.rootpath / "tests" / "MIN_TESTS").read_text().split()[0])


def full_suite_under_ci(config: pytest.Config) -> bool:
    return (
        bool(os.environ.get("CI"))
        and config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and not config.option.keyword
        and config.option.markexpr == DEFAULT_MARKEXPR
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("marked gpu: needs a CUDA GPU, and torch.cuda.is_available() is False here")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:  # skipped in setup or call, or an xfail
        _skipped.append(f"{report.nodeid} ({report.longrepr[2] if isinstance(report.longrepr, tuple) else 'xfail'})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not full_suite_under_ci(session.config):
        return
    problems = [f"skipped under CI: {s}" for s in _skipped]
    if (selected := len(session.items)) < (floor := min_tests(session.config)):
        problems.append(f"only {selected} tests selected, tests/MIN_TESTS expects at least {floor}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in problems:
            if reporter is not None:
                reporter.write_line(f"suite_guard: {line}", red=True)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
