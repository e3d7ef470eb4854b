"""Summarise a multirun: `summary.csv` and `summary.md` at the sweep root, one row per job, written as jobs end.

A Hydra callback (conf/hydra/default.yaml), so it works with any sweeper (basic, Optuna) and launcher.
A failing job (a bad value for that job, a crash) fails alone: its job function raises to Hydra, which
records it, runs the other jobs of the batch (all of them with the basic sweeper's default
`max_batch_size: null`), then re-raises the first failure and never calls `on_multirun_end`. So rows are
written from `on_job_end`, and an exit hook prints the table the skipped `on_multirun_end` would have. An
interrupted job (Ctrl-C, SIGTERM) stops the sweep by SystemExit, skipping `on_job_end`: the exit hook
records it as `interrupted`, with the checkpoint that resumes it.
It does nothing outside MULTIRUN mode, and nothing in the extra processes of a DDP job (rank > 0).
`EndGcPauseInSweeps`, the other callback here, ends the start-up garbage-collector pause in a sweep's process.
"""

from __future__ import annotations

import atexit
import csv
import fcntl
import io
import json
import logging
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_cnn.config.resolvers import env_rank
from mnist_cnn.core.errors import EXITING, describe, first_line
from mnist_cnn.core.io import atomic_write
from mnist_cnn.core.memory import end_gc_pause

log = logging.getLogger("mnist_cnn.config.sweep")
FIELDS = ("job", "overrides", "status", "val/acc_best", "test/acc", "wall_time_s", "checkpoint", "output_dir", "error")
SEED_KEYS = ("seed", "+seed", "++seed")


def in_sweep() -> bool:
    """True in a job of a multirun (`-m`), where a failing job must leave the other jobs running."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return bool(HydraConfig.get().mode == RunMode.MULTIRUN)
    except ValueError:  # not under Hydra
        return False


def child_rank() -> bool:
    """True in a process a launcher started for a rank > 0 (Lightning's DDP re-launch, torchrun, srun)."""
    return env_rank() != 0


@contextmanager
def locked(sweep_dir: Path) -> Iterator[None]:
    """Serialise summary updates: parallel launchers (joblib, submitit) end jobs concurrently."""
    with open(sweep_dir / ".summary.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_rows(sweep_dir: Path) -> list[dict[str, str]]:
    path = sweep_dir / "summary.csv"
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def seedless(overrides: str) -> str:
    """The overrides without the seed: jobs with equal seedless overrides differ only in the seed."""
    return " ".join(o for o in overrides.split() if o.split("=", 1)[0] not in SEED_KEYS)


def best_index(rows: list[dict[str, str]], metric: str, maximize: bool) -> int | None:
    scored = [
        (v, i) for i, r in enumerate(rows) if r["status"] == "completed" and (v := _float(r.get(metric))) is not None
    ]
    if not scored:
        return None
    return min(scored, key=lambda t: (-t[0] if maximize else t[0], t[1]))[1]  # ties: the earlier job


def render_markdown(
    rows: list[dict[str, str]], sweep_dir: Path, metric: str = "val/acc_best", maximize: bool = True
) -> str:
    """The sweep as a table (best job by `metric` marked), then mean ± std over seeds per group of jobs."""
    common = set.intersection(*(set(r["overrides"].split()) for r in rows)) if len(rows) > 1 else set()
    best = best_index(rows, metric, maximize)
    lines = [f"# Sweep summary: {sweep_dir}", ""]
    if common:
        lines += [f"Overrides common to every job: `{' '.join(sorted(common))}`", ""]
    lines += [
        f"Best by {metric} ({'max' if maximize else 'min'}) is marked **best**; test/acc is only reported.",
        "",
        "| | job | overrides | status | val/acc_best | test/acc | wall time (s) | checkpoint |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(rows):
        own = " ".join(o for o in r["overrides"].split() if o not in common) or "(none)"
        status = r["status"] + (f": {r['error']}" if r.get("error") else "")
        cells = ["**best**" if i == best else "", r["job"], f"`{own}`", status, _fmt(_float(r["val/acc_best"])),
                 _fmt(_float(r["test/acc"])), r["wall_time_s"], r["checkpoint"]]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        if r["status"] == "completed":
            groups.setdefault(seedless(" ".join(o for o in r["overrides"].split() if o not in common)), []).append(r)
    lines += [
        "",
        "## Mean ± std over seeds",
        "",
        "(groups of completed jobs that differ only in `seed`; sample std)",
        "",
    ]
    lines += ["| overrides | seeds | n | val/acc_best | test/acc |", "| --- | --- | --- | --- | --- |"]
    seeded = {k: m for k, m in groups.items() if len(m) >= 2}
    if not seeded:
        lines.append("| (no two completed jobs differ only in the seed) | | | | |")
    for key, members in seeded.items():
        seeds = [o.split("=", 1)[1] for r in members for o in r["overrides"].split() if o.split("=", 1)[0] in SEED_KEYS]
        cells = [f"`{key or '(none)'}`", ",".join(seeds) or "(default)", str(len(members))]
        for name in ("val/acc_best", "test/acc"):
            values = [v for r in members if (v := _float(r[name])) is not None]
            if len(values) >= 2:
                cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
            else:
                cells.append(f"{values[0]:.4f} (one run)" if values else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def record(sweep_dir: Path, row: dict[str, Any], metric: str, maximize: bool) -> None:
    """Add or replace this job's row, then rewrite summary.csv and summary.md (each atomically)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with locked(sweep_dir):
        rows = [r for r in read_rows(sweep_dir) if r["job"] != str(row["job"])]
        rows.append({k: "" if row.get(k) is None else str(row[k]) for k in FIELDS})
        rows.sort(key=lambda r: int(r["job"]))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(sweep_dir / "summary.csv", buf.getvalue())
        atomic_write(sweep_dir / "summary.md", render_markdown(rows, sweep_dir, metric, maximize))


class SweepSummary(Callback):
    """Hydra callback: one summary row per multirun job, as soon as the job ends; the table printed at the end."""

    def __init__(self, metric: str = "val/acc_best", direction: str = "maximize") -> None:
        self.metric, self.maximize = metric, direction != "minimize"
        self._job: dict[str, Any] | None = None
        self._exit_hook = False
        self._sweep_dir: Path | None = None  # set once a row is written; cleared when the summary is printed

    @staticmethod
    def _active(config: DictConfig) -> bool:
        return config.hydra.mode == RunMode.MULTIRUN and not child_rank()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._active(config):
            return
        self._job = {
            "job": config.hydra.job.num,
            "overrides": " ".join(config.hydra.overrides.task),
            "output_dir": config.hydra.runtime.output_dir,
            "sweep_dir": Path(config.hydra.sweep.dir),
            "start": time.perf_counter(),
        }
        if not self._exit_hook:
            atexit.register(self._on_exit)
            self._exit_hook = True

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not self._active(config) or self._job is None:
            return
        ok, err = job_return.status == JobStatus.COMPLETED, job_return._return_value
        self._finish("completed" if ok else "failed", None if ok else describe(err) or first_line(err))

    def _on_exit(self) -> None:
        """At process exit: record a job left by SystemExit/KeyboardInterrupt, print a summary not yet printed."""
        if self._job is not None:
            code, why = EXITING[-1] if EXITING else (None, "the job exited before returning (see its log)")
            self._finish("interrupted" if code and code > 128 else "failed", why)
        if self._sweep_dir is not None:  # the sweep failed, so on_multirun_end never ran
            self._print(self._sweep_dir)

    def _finish(self, status: str, error: str | None) -> None:
        assert self._job is not None
        job, self._job = self._job, None
        metrics_file = Path(job["output_dir"]) / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if status == "completed" and metrics_file.is_file() else {}
        resume = Path(job["output_dir"]) / "checkpoints" / "interrupted.ckpt"
        if status == "interrupted" and resume.is_file():
            metrics["best_ckpt"] = str(resume)  # what resumes it
        row = {
            **{k: job[k] for k in ("job", "overrides", "output_dir")},
            "status": status,
            "val/acc_best": metrics.get("val/acc_best"),
            "test/acc": metrics.get("test/acc"),
            "wall_time_s": round(time.perf_counter() - job["start"], 2),
            "checkpoint": metrics.get("best_ckpt"),
            "error": error and error.replace("\n", " ")[:300],
        }
        record(job["sweep_dir"], row, self.metric, self.maximize)
        self._sweep_dir = job["sweep_dir"]
        scores = f"val/acc_best {_fmt(row['val/acc_best'])}, test/acc {_fmt(row['test/acc'])}"
        summary = job["sweep_dir"] / "summary.csv"
        log.info("sweep job %s %s: %s -> %s", row["job"], status, row["error"] or scores, summary)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if child_rank():
            return
        self._print(Path(config.hydra.sweep.dir))

    def _print(self, sweep_dir: Path) -> None:
        self._sweep_dir = None
        if (sweep_dir / "summary.md").is_file():
            print("\n" + (sweep_dir / "summary.md").read_text(), flush=True)
            print(f"summary: {sweep_dir / 'summary.csv'}, {sweep_dir / 'summary.md'}", flush=True)


class EndGcPauseInSweeps(Callback):
    """Hydra callback: a multirun's own process collects garbage as usual from the start.

    `main()` pauses the collector until a run's imports are done (core/memory.py), but a sweep's jobs may never
    run in its process (a SLURM launcher submits them and waits, for hours).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        end_gc_pause()
