"""Multirun summaries (mnist_cnn/config/sweep.py) and the Optuna search, run as users run them: `train.py -m`."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import QUIET, REPO, check, real_data_dir, run_train
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from mnist_cnn.config.sweep import SweepSummary, render_markdown


def rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv") as fh:
        return list(csv.DictReader(fh))


def overrides(row: dict[str, str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in row["overrides"].split())


def mean_std_cells(md: str) -> dict[str, list[str]]:
    """The mean ± std table of summary.md: overrides -> the row's cells."""
    section = md.split("## Mean ± std over seeds", 1)[1]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            out[cells[0].strip("`")] = cells[1:]
    return out


def test_seed_by_lr_multirun_on_real_mnist(tmp_path: Path) -> None:
    """The issue's check: 6 jobs, one sweep dir, summary.csv with 6 rows, a mean ± std per lr over the seeds."""
    sweep = tmp_path / "sweep"
    proc = check(run_train("-m", "seed=0,1,2", "model.optimizer.lr=1e-3,3e-3", "trainer.max_epochs=1",
                           f"data.data_dir={real_data_dir()}", f"hydra.sweep.dir={sweep}",
                           "trainer.limit_train_batches=30", "trainer.limit_val_batches=1",
                           "trainer.limit_test_batches=2", *QUIET))  # fmt: skip
    table = rows(sweep)
    assert [r["job"] for r in table] == ["0", "1", "2", "3", "4", "5"]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3", "4", "5"]
    combos = {(int(o["seed"]), float(o["model.optimizer.lr"])) for o in map(overrides, table)}
    assert combos == {(s, lr) for s in (0, 1, 2) for lr in (1e-3, 3e-3)}
    for r in table:
        m = json.loads((sweep / r["job"] / "metrics.json").read_text())
        assert r["status"] == "completed" and not r["error"]
        assert float(r["val/acc_best"]) == pytest.approx(m["val/acc_best"]) and float(r["test/acc"]) == m["test/acc"]
        assert Path(r["checkpoint"]) == Path(m["best_ckpt"]) and Path(r["checkpoint"]).is_file()
        assert float(r["wall_time_s"]) >= m["wall_time_s"] - 0.01 > 0  # the job, Hydra's part included
        if r["job"] != "0":  # start-up counts from the job's own start, not from the first job's
            assert 0 < m["startup_s"] < m["wall_time_s"]
        assert list((sweep / r["job"] / "tensorboard").glob("events.out.tfevents.*"))  # all under one logdir

    md = (sweep / "summary.md").read_text()
    best = max(table, key=lambda r: float(r["val/acc_best"]))
    (best_line,) = [line for line in md.splitlines() if line.startswith("| **best** |")]
    assert best_line.split("|")[2].strip() == best["job"]
    groups = mean_std_cells(md)
    assert {float(key.split("=")[1]) for key in groups} == {1e-3, 3e-3} and len(groups) == 2
    for key, (seeds, n, val, test) in groups.items():
        members = [r for r in table if key in r["overrides"].split()]
        assert sorted(seeds.split(",")) == ["0", "1", "2"] and n == "3"
        for cell, name in ((val, "val/acc_best"), (test, "test/acc")):
            values = [float(r[name]) for r in members]
            assert cell == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    assert "## Mean ± std over seeds" in proc.stdout and best_line in proc.stdout  # printed at the end


@pytest.mark.parametrize("case", ["exception", "user_error", "stop_at_first_failure"])
def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tiny_mnist: Path, tmp_path: Path, case: str) -> None:
    """Job 1 of 3 fails; jobs 0 and 2 run all the same, every row is on disk and printed, the exit is non-zero."""
    if case == "exception":  # a crash mid-training (tests/faults.py): Hydra re-raises it once the sweep has run
        crash = "{_target_:tests.faults.CrashOnRank,rank:0}"
        sweep_args, error, code = [f"+callbacks.crash=null,{crash},null", "data.val_size=50"], "injected crash", 1
    else:  # a value that is bad for this job only (ValidateConfig's check as the job starts): one error line
        sweep_args, error, code = ["data.val_size=50,100000,50"], "data.val_size=100000 is invalid: must be", 2
    if case == "stop_at_first_failure":  # Hydra's basic sweeper re-raises after each batch: batches of one job
        sweep_args.append("hydra.sweeper.max_batch_size=1")
    sweep = tmp_path / "sweep"
    data = f"data.data_dir={tiny_mnist}"
    proc = run_train("-m", *sweep_args, data, "debug=limit", f"hydra.sweep.dir={sweep}", *QUIET)
    assert proc.returncode == code, proc.stderr[-3000:]
    table = rows(sweep)
    want = [("0", "completed"), ("1", "failed"), ("2", "completed")][: 2 if case == "stop_at_first_failure" else 3]
    assert [(r["job"], r["status"]) for r in table] == want
    for r in table[::2]:
        assert float(r["test/acc"]) == json.loads((sweep / r["job"] / "metrics.json").read_text())["test/acc"]
    assert error in table[1]["error"] and not table[1]["test/acc"] and "\n" not in table[1]["error"]
    if code == 2:  # the job's error in its log as it fails, then once as the sweep's `error:` line at the end
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: {table[1]['error']}"]
        assert f"this job failed: {table[1]['error']}" in (sweep / "1" / "debug.log").read_text()
    md = (sweep / "summary.md").read_text()
    assert f"| failed: {table[1]['error']} |" in md and md.splitlines()[-1] in proc.stdout  # printed at exit


def test_an_interrupted_sweep_stops_and_says_so(tiny_mnist: Path, tmp_path: Path) -> None:
    """Ctrl-C in job 1 stops the sweep (job 2 never runs); its row says interrupted, with the checkpoint."""
    sweep, progress = tmp_path / "sweep", tmp_path / "progress"
    pace = f"{{_target_:inject.Pace,progress:'{progress}',seconds:0.5}}"
    args = ["-m", f"+callbacks.pace=null,{pace},null", "data.val_size=50", "trainer.max_epochs=20",
            f"data.data_dir={tiny_mnist}", "debug=limit", f"hydra.sweep.dir={sweep}", *QUIET]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 300
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    table = rows(sweep)
    assert [(r["job"], r["status"]) for r in table] == [("0", "completed"), ("1", "interrupted")]
    assert table[1]["error"].startswith("interrupted by SIGINT at epoch 0")
    assert Path(table[1]["checkpoint"]) == sweep / "1" / "checkpoints" / "interrupted.ckpt"
    assert Path(table[1]["checkpoint"]).is_file() and not (sweep / "2").exists()
    assert "| interrupted: interrupted by SIGINT" in out  # the summary, printed at exit


def test_optuna_search_on_val_accuracy(tiny_mnist: Path, tmp_path: Path) -> None:
    """3 short trials offline (in-memory storage): summarised like any sweep, optimised on val, never test."""
    sweep = tmp_path / "optuna"
    check(run_train("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3", "debug=limit", "data.val_size=50",
                    f"data.data_dir={tiny_mnist}", f"hydra.sweep.dir={sweep}", *QUIET))  # fmt: skip
    table = rows(sweep)
    assert [r["job"] for r in table] == ["0", "1", "2"] and {r["status"] for r in table} == {"completed"}
    for r in table:
        params = overrides(r)
        assert 1e-4 <= float(params["model.optimizer.lr"]) <= 1e-2
        assert params["data.batch_size"] in {"32", "64", "128", "256"}
        saved = OmegaConf.load(sweep / r["job"] / ".hydra" / "config.yaml")
        assert saved.model.optimizer.lr == float(params["model.optimizer.lr"])  # the trial really used it
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best_val = max(float(r["val/acc_best"]) for r in table)
    assert results["best_value"] == pytest.approx(best_val)  # what main() returned: val/acc_best
    assert "**best**" in (sweep / "summary.md").read_text()


def job_config(tmp_path: Path, mode: RunMode) -> Any:
    return OmegaConf.create({"hydra": {
        "mode": mode, "job": {"num": 0}, "overrides": {"task": ["seed=1"]},
        "runtime": {"output_dir": str(tmp_path / "0")}, "sweep": {"dir": str(tmp_path)},
    }})  # fmt: skip


@pytest.mark.parametrize(("mode", "env"), [(RunMode.RUN, {}), (RunMode.MULTIRUN, {"LOCAL_RANK": "1"}),
                                           (RunMode.MULTIRUN, {"RANK": "2"}), (RunMode.MULTIRUN, {})])  # fmt: skip
def test_writes_only_from_the_multirun_rank_zero(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    mode: RunMode,
    env: dict[str, str],
) -> None:
    """DDP re-launches a job's ranks > 0 as separate `train.py` runs: they must never touch the summary."""
    for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cb, cfg = SweepSummary(), job_config(tmp_path, mode)
    cb.on_job_start(cfg)
    ret = JobReturn()
    ret.status, ret.return_value = JobStatus.COMPLETED, 0.5
    cb.on_job_end(cfg, ret)
    writes = mode == RunMode.MULTIRUN and not env
    assert (tmp_path / "summary.csv").is_file() == writes
    if writes:
        assert rows(tmp_path)[0]["overrides"] == "seed=1" and rows(tmp_path)[0]["status"] == "completed"
    cb.on_multirun_end(cfg)  # prints the table (once: nothing is left for the exit hook)
    assert ("| 0 | `seed=1` | completed |" in capsys.readouterr().out) == writes


def test_markdown_best_row_and_seed_groups() -> None:
    table = [
        {"job": "0", "overrides": "a=1 seed=0", "status": "completed", "val/acc_best": "0.90", "test/acc": "0.80"},
        {"job": "1", "overrides": "a=1 seed=1", "status": "completed", "val/acc_best": "0.94", "test/acc": "0.70"},
        {"job": "2", "overrides": "a=2 seed=0", "status": "completed", "val/acc_best": "0.93", "test/acc": "0.99"},
        {"job": "3", "overrides": "a=2 seed=1", "status": "failed", "val/acc_best": "", "test/acc": ""},
    ]
    for r in table:
        r.update(wall_time_s="1", checkpoint="", output_dir="", error="")
    md = render_markdown(table, Path("sweep"))
    (best,) = [line for line in md.splitlines() if "**best**" in line and line.startswith("|")]
    assert "| 1 |" in best  # chosen on val (0.94), not on test (job 2 has the best test/acc)
    groups = mean_std_cells(md)
    assert groups == {"a=1": ["0,1", "2", "0.9200 ± 0.0283", "0.7500 ± 0.0707"]}  # the failed job counts nowhere
