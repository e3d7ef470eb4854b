"""What a run records about itself and its process: provenance.json, where it runs, and a fast clean exit."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("mnist_cnn.train")
PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "torchmetrics", "tensorboard", "numpy")


def provenance() -> dict[str, Any]:
    """What produced this run: code version, packages, command line."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": commit,
        "git_dirty": None if commit is None else bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": versions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe_processes(trainer: Any, batch_size: int, accumulate: int) -> None:
    """Say where training runs and what the batch size means there (per device; global = x world size)."""
    per_node = trainer.num_devices
    world = per_node * trainer.num_nodes
    threads = os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // per_node)
    kind = type(trainer.accelerator).__name__
    log.info(
        "training on %s: %d process(es) per node x %d node(s)%s; batch %d per device -> global batch %d",
        kind.removesuffix("Accelerator").lower(), per_node, trainer.num_nodes,
        f", {threads} CPU thread(s) each" if kind == "CPUAccelerator" else "",
        batch_size, batch_size * world * accumulate,
    )  # fmt: skip


def exit_without_teardown() -> None:
    """Exit 0 without the interpreter's module teardown, which costs ~1.2 s of every run after torch + Lightning.

    Everything the run owns is written and closed by now; what a normal exit would still do is done here
    (threads' shutdown hooks and joins, atexit handlers, flushing logs and stdio). Where this Python lacks
    the names for that (mnist_cnn/core/compat.py), the process exits the normal way.
    """
    from mnist_cnn.core.compat import interpreter_exit

    run = interpreter_exit()
    if run is None:
        return
    run()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
