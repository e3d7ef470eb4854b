"""`summary.csv` and `summary.md` at a multirun's root, a row per job written as each job ends (a Hydra callback).

It works with any sweeper and launcher. A failing job fails alone: Hydra records it, runs the other jobs, then
ends the sweep non-zero without calling `on_multirun_end`; an interrupted job stops the sweep by SystemExit
without `on_job_end`. So rows are written at job end, and an exit hook records what those skipped and prints
the table.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import fcntl
import io
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

FIELDS = ("job", "overrides", "status", "val/acc_best", "test/acc", "wall_time_s", "checkpoint", "output_dir", "error")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def render(rows: list[dict[str, str]], sweep_dir: Path, metric: str) -> str:
    """The jobs as a table, the best by `metric` marked (never chosen on test), then mean ± std over seeds."""
    scored = [(_number(r[metric]), -i) for i, r in enumerate(rows) if r["status"] == "completed" and r[metric]]
    best = -max(scored)[1] if scored else None
    lines = [f"# Sweep summary: {sweep_dir}", "", f"Best by {metric} is marked **best**; test/acc is only shown.", "",
             "| | job | overrides | status | val/acc_best | test/acc | wall time (s) | checkpoint |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    groups: dict[str, list[dict[str, str]]] = {}
    for i, r in enumerate(rows):
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        cells = ["**best**" if i == best else "", r["job"], f"`{r['overrides'] or '(none)'}`", status,
                 r["val/acc_best"], r["test/acc"], r["wall_time_s"], r["checkpoint"]]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if r["status"] == "completed":
            seedless = " ".join(o for o in r["overrides"].split() if not o.lstrip("+").startswith("seed="))
            groups.setdefault(seedless, []).append(r)
    lines += [
        "",
        "## Mean ± std over seeds",
        "",
        "| overrides | n | val/acc_best | test/acc |",
        "| --- | --- | --- | --- |",
    ]
    for key, members in groups.items():
        cells = [f"`{key or '(none)'}`", str(len(members))]
        for name in ("val/acc_best", "test/acc"):
            values = [v for r in members if (v := _number(r[name])) is not None]
            cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")
        if len(members) > 1:
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def record(sweep_dir: Path, row: dict[str, Any], metric: str) -> None:
    """Add or replace this job's row, then rewrite both files (each atomically; parallel jobs take turns)."""
    with open(sweep_dir / ".summary.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = sweep_dir / "summary.csv"
        rows = (
            [r for r in csv.DictReader(io.StringIO(path.read_text())) if r["job"] != str(row["job"])]
            if path.is_file()
            else []
        )
        rows.append({k: "" if row.get(k) is None else str(row[k]) for k in FIELDS})  # job 0 is a job, not a blank
        rows.sort(key=lambda r: int(r["job"]))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        for name, text in (("summary.csv", out.getvalue()), ("summary.md", render(rows, sweep_dir, metric))):
            (tmp := sweep_dir / f".{name}.{os.getpid()}").write_text(text)
            os.replace(tmp, sweep_dir / name)


class SweepSummary(Callback):
    """Hydra callback (conf/hydra/default.yaml): the summary of a multirun, kept up to date as jobs end.

    Args:
        metric: what marks the best job; a validation score, never a test score.
    """

    def __init__(self, metric: str = "val/acc_best") -> None:
        self.metric = metric
        self.job: dict[str, Any] | None = None
        self.sweep_dir: Path | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        if self.sweep_dir is None:
            atexit.register(self._at_exit)
        self.sweep_dir = Path(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        self.job = {"job": config.hydra.job.num, "overrides": overrides, "output_dir": config.hydra.runtime.output_dir,
                    "start": time.perf_counter()}  # fmt: skip

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.job is None:
            return
        error = None
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # a failed job's value says so on stderr, then raises
                job_return.return_value  # noqa: B018
        except Exception as err:
            error = " ".join(str(err).split())[:300] or type(err).__name__
        self._finish("completed" if job_return.status == JobStatus.COMPLETED else "failed", error)

    def _finish(self, status: str, error: str | None) -> None:
        assert self.job is not None and self.sweep_dir is not None
        job, self.job = self.job, None
        out = Path(job["output_dir"])
        metrics = json.loads((out / "metrics.json").read_text()) if status == "completed" else {}
        if status == "interrupted":
            metrics["best_ckpt"] = out / "checkpoints" / "interrupted.ckpt"  # what resumes it
        scores = {k: f"{metrics[k]:.4f}" for k in ("val/acc_best", "test/acc") if k in metrics}
        wall = round(time.perf_counter() - job["start"], 1)
        row = {**job, **scores, "status": status, "error": error, "checkpoint": metrics.get("best_ckpt")}
        row["wall_time_s"] = wall
        record(self.sweep_dir, row, self.metric)

    def _at_exit(self) -> None:
        """A job that left by SystemExit (interrupted, or a launcher's exit) gets its row; then the table."""
        if self.job is not None:
            interrupted = (Path(self.job["output_dir"]) / "checkpoints" / "interrupted.ckpt").is_file()
            self._finish("interrupted" if interrupted else "failed", None if interrupted else "exited (see its log)")
        if self.sweep_dir is not None and (self.sweep_dir / "summary.md").is_file():
            print("\n" + (self.sweep_dir / "summary.md").read_text(), flush=True)
            print(f"summary: {self.sweep_dir / 'summary.csv'}, {self.sweep_dir / 'summary.md'}", flush=True)
