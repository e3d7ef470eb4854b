"""Multiruns as users run them (`train.py -m`): the summary at the sweep root, a failed job that does not stop the
others, an interrupted sweep, and an Optuna study kept in sqlite that the next command resumes."""

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

import optuna
import pytest
import yaml
from conftest import QUIET, REPO, check, real_data_dir, run_cli

from mnist_cnn.study import ResumableTPESampler

ENV = {"PYTHONPATH": str(REPO / "tests")}
QUICK = ("debug=limit", "data.val_size=50", "logger=none", *QUIET)


def rows(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv") as fh:
        return list(csv.DictReader(fh))


def overrides(row: dict[str, str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in row["overrides"].split())


def test_seed_by_lr_multirun_on_real_mnist(tmp_path: Path) -> None:
    """6 jobs, one sweep folder, summary.csv with 6 rows, the best by val marked, a mean ± std per lr over seeds."""
    sweep = tmp_path / "sweep"
    proc = check(
        run_cli(
            "train.py",
            "-m",
            "seed=0,1,2",
            "model.optimizer.lr=1e-3,3e-3",
            "trainer.max_epochs=1",
            f"data.data_dir={real_data_dir()}",
            f"hydra.sweep.dir={sweep}",
            "trainer.limit_train_batches=20",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            *QUIET,
        )
    )
    table = rows(sweep)
    assert [r["job"] for r in table] == ["0", "1", "2", "3", "4", "5"]
    combos = {(int(o["seed"]), float(o["model.optimizer.lr"])) for o in map(overrides, table)}
    assert combos == {(s, lr) for s in (0, 1, 2) for lr in (1e-3, 3e-3)}
    for r in table:
        m = json.loads((sweep / r["job"] / "metrics.json").read_text())
        assert r["status"] == "completed" and not r["error"]
        assert float(r["val/acc_best"]) == pytest.approx(m["val/acc_best"], abs=5e-5)
        assert float(r["test/acc"]) == pytest.approx(m["test/acc"], abs=5e-5)
        assert Path(r["checkpoint"]) == Path(m["best_ckpt"]) and Path(r["checkpoint"]).is_file()
        assert list((sweep / r["job"] / "tensorboard").glob("events.out.tfevents.*"))  # one logdir for the sweep

    md = (sweep / "summary.md").read_text()
    best = max(table, key=lambda r: (float(r["val/acc_best"]), -int(r["job"])))
    (best_line,) = [line for line in md.splitlines() if line.startswith("| **best** |")]
    assert best_line.split("|")[2].strip() == best["job"]
    section = md.split("## Mean ± std over seeds", 1)[1]
    groups = {
        c[0].strip("`"): c[1:]
        for line in section.splitlines()
        if line.startswith("| `")
        for c in [[x.strip() for x in line.strip().strip("|").split("|")]]
    }
    assert {float(dict(o.split("=", 1) for o in key.split())["model.optimizer.lr"]) for key in groups} == {1e-3, 3e-3}
    for key, (n, val, test) in groups.items():
        members = [r for r in table if " ".join(o for o in r["overrides"].split() if not o.startswith("seed=")) == key]
        assert n == "3"
        for cell, name in ((val, "val/acc_best"), (test, "test/acc")):
            values = [float(r[name]) for r in members]
            assert cell == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    assert best_line in proc.stdout  # printed at the end


@pytest.mark.parametrize("case", ["exception", "user_error"])
def test_a_failed_job_is_recorded_the_others_run_and_the_sweep_exits_non_zero(
    tiny_mnist: Path, tmp_path: Path, case: str
) -> None:
    if case == "exception":  # a crash mid-training (tests/faults.py)
        sweep_args, error = ["+callbacks.crash=null,{_target_:faults.CrashOnRank,rank:0},null"], "injected crash"
    else:  # a value that is bad for this job only
        sweep_args, error = ["data.batch_size=8,0,8"], "data.batch_size=0 is invalid"
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train.py", "-m", *sweep_args, *QUICK, f"data.data_dir={tiny_mnist}", f"hydra.sweep.dir={sweep}", env=ENV
    )
    assert proc.returncode != 0, proc.stderr[-3000:]
    table = rows(sweep)
    assert [(r["job"], r["status"]) for r in table] == [("0", "completed"), ("1", "failed"), ("2", "completed")]
    for r in table[::2]:
        assert Path(r["checkpoint"]).is_file() and (sweep / r["job"] / "metrics.json").is_file()
    assert error in table[1]["error"] and not table[1]["test/acc"]
    md = (sweep / "summary.md").read_text()
    assert f"| failed: {table[1]['error']} |" in md and md.splitlines()[-1] in proc.stdout  # printed at exit


def test_an_interrupted_sweep_stops_and_says_so(tiny_mnist: Path, tmp_path: Path) -> None:
    """Ctrl-C in job 1 stops the sweep (job 2 never runs); its row says interrupted, with the checkpoint."""
    sweep, progress = tmp_path / "sweep", tmp_path / "progress"
    pace = f"{{_target_:inject.Pace,progress:'{progress}',seconds:0.5}}"
    args = [
        "-m",
        f"+callbacks.pace=null,{pace},null",
        *QUICK,
        "trainer.max_epochs=20",
        f"data.data_dir={tiny_mnist}",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env={**os.environ, **ENV},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    table = rows(sweep)
    assert [(r["job"], r["status"]) for r in table] == [("0", "completed"), ("1", "interrupted")]
    assert Path(table[1]["checkpoint"]) == sweep / "1" / "checkpoints" / "interrupted.ckpt"
    assert Path(table[1]["checkpoint"]).is_file() and not (sweep / "2").exists()
    assert "| interrupted |" in out  # the summary, printed at exit


def test_an_optuna_study_in_sqlite_is_resumed_by_the_next_command(tiny_mnist: Path, tmp_path: Path) -> None:
    """README's `hydra.sweeper.storage=sqlite:///...`: a second command with the same study_name adds its trials
    to the first's, with parameters the study has not tried (a seeded sampler would replay them)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for part in ("first", "second"):
        check(
            run_cli(
                "train.py",
                "-m",
                "hparams_search=optuna",
                "hydra.sweeper.n_trials=2",
                *QUICK,
                f"hydra.sweeper.storage={storage}",
                "hydra.sweeper.study_name=resumed",
                f"data.data_dir={tiny_mnist}",
                f"hydra.sweep.dir={tmp_path / part}",
            )
        )
    study = optuna.load_study(study_name="resumed", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    lrs = [t.params["model.optimizer.lr"] for t in study.trials]
    ran = [float(overrides(r)["model.optimizer.lr"]) for part in ("first", "second") for r in rows(tmp_path / part)]
    assert ran == lrs and len(set(lrs)) == 4  # each command's jobs are the study's trials, none repeated
    results = yaml.safe_load((tmp_path / "second" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(t.value or 0.0 for t in study.trials))  # the whole study's best


def test_a_fresh_study_samples_as_the_seeded_tpe_sampler() -> None:
    """The resumable sampler changes nothing for a new study: the same trials as optuna's own, same seed."""

    def lrs(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = optuna.create_study(sampler=sampler, direction="maximize")
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=12)
        return [t.params["lr"] for t in study.trials]

    assert lrs(ResumableTPESampler(seed=1234, n_startup_trials=8)) == lrs(
        optuna.samplers.TPESampler(seed=1234, n_startup_trials=8)
    )
