"""pytest hooks (imported by conftest.py) so that CI cannot pass by running less than the suite.

Under CI (`$CI` set, as .ci/run and CI services do), two runs are guarded, each with no paths, no -k and no -m
but its own:

- the full default run (`python -m pytest`, the README's command): fails when any test is skipped or when fewer
  tests were selected than the first number of tests/MIN_TESTS says;
- the browser run (`python -m pytest -m browser`): fails when any test is skipped or when fewer browser tests
  were selected than the second number of tests/MIN_TESTS (1 when it has none): no Chromium, or a browser test
  that stopped being collected, is a failure, never a quiet pass.

An import that quietly turns into a skip, or a module that stops being collected, is a failure.
`gpu`- and `browser`-marked tests are deselected by pyproject's addopts (`-m "not gpu and not browser"`); `gpu`
ones run with `-m gpu` on a GPU machine, where a missing GPU skips them with a reason (that run is not guarded).
"""

from __future__ import annotations

import os

import pytest

DEFAULT_MARKEXPR = "not gpu and not browser"  # pyproject.toml addopts
BROWSER_MARKEXPR = "browser"  # .ci/run's second run
_skipped: list[str] = []


def floors(config: pytest.Config) -> dict[str, int]:
    """The fewest tests each guarded run may select: tests/MIN_TESTS' first line, `<suite> [<browser>]`."""
    words = (config.rootpath / "tests" / "MIN_TESTS").read_text().splitlines()[0].split()
    return {DEFAULT_MARKEXPR: int(words[0]), BROWSER_MARKEXPR: int(words[1]) if len(words) > 1 else 1}


def guarded_run(config: pytest.Config) -> str | None:
    """The -m expression of this run when it is one of the runs CI guards (see above), else None."""
    if not os.environ.get("CI") or config.args_source != pytest.Config.ArgsSource.TESTPATHS or config.option.keyword:
        return None
    markexpr = config.option.markexpr
    return markexpr if markexpr in (DEFAULT_MARKEXPR, BROWSER_MARKEXPR) else None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("marked gpu: needs a CUDA GPU, and torch.cuda.is_available() is False here")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:  # skipped in setup or call, or an xfail
        _skipped.append(f"{report.nodeid} ({report.longrepr[2] if isinstance(report.longrepr, tuple) else 'xfail'})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (run := guarded_run(session.config)) is None:
        return
    problems = [f"skipped under CI: {s}" for s in _skipped]
    kind = "browser tests" if run == BROWSER_MARKEXPR else "tests"
    if (selected := len(session.items)) < (floor := floors(session.config)[run]):
        problems.append(f"only {selected} {kind} selected, tests/MIN_TESTS expects at least {floor}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in problems:
            if reporter is not None:
                reporter.write_line(f"suite_guard: {line}", red=True)
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
