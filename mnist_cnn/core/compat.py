"""The private Hydra and Lightning names this project relies on, each checked before use with a one-line error.

An upgrade that renames one would otherwise break a promise silently: assigning to a renamed attribute just adds a
new one. Hydra's is checked when this module is imported (every entry point imports it before Hydra runs); Lightning's
when first needed, so a config typo is still reported before Lightning is imported.
"""

from __future__ import annotations

import atexit
import importlib
import threading
from collections.abc import Callable
from contextlib import suppress
from importlib import metadata
from types import ModuleType
from typing import Any

from mnist_cnn.core.errors import UserError

# By top-level package: the distribution that installs it, and the versions that have every name below.
WORKS = {"hydra": ("hydra-core", "hydra-core 1.3.x"), "lightning": ("lightning", "lightning 2.6.x (tested with 2.6.6)")}


class IncompatibleVersion(UserError):
    """An installed library no longer has a private name this project uses."""


def private(module: str, name: str) -> ModuleType:
    """`module` after checking it still defines `name`; else one line naming the versions that work."""
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return mod
    package, works = WORKS[module.split(".")[0]]
    installed = "unknown"
    with suppress(metadata.PackageNotFoundError):
        installed = metadata.version(package)
    raise IncompatibleVersion(
        f"{module}.{name} is missing in {package} {installed}; mnist-cnn needs {works}: "
        "pip install -c constraints.txt -e ."
    )


def hydra_utils() -> ModuleType:
    """`hydra._internal.utils`, whose `run_and_report` the one-line error reporting wraps (core/errors.py)."""
    return private("hydra._internal.utils", "run_and_report")


def lightning_subprocess_script() -> ModuleType:
    """Lightning's DDP launcher module, whose `_hydra_subprocess_cmd` starts ranks > 0 (config/launch.py)."""
    return private("lightning.pytorch.strategies.launchers.subprocess_script", "_hydra_subprocess_cmd")


def precision_names() -> list[str]:
    """Every `trainer.precision` value Lightning accepts, from its `_PRECISION_INPUT` type (config/schema.py)."""
    literal: Any = private("lightning.fabric.plugins.precision.precision", "_PRECISION_INPUT")._PRECISION_INPUT
    return [p for lit in literal.__args__ for p in lit.__args__]


def interpreter_exit() -> Callable[[], None] | None:
    """What CPython runs at exit before it tears modules down, or None where these names are missing.

    `threading._shutdown` runs the executors' shutdown hooks (concurrent.futures, torch's compile workers) and then
    joins the non-daemon threads; `atexit._run_exitfuncs` runs the atexit handlers. Joining the threads without the
    hooks first waits forever on an executor's idle worker.
    """
    shutdown, exitfuncs = getattr(threading, "_shutdown", None), getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or exitfuncs is None:
        return None

    def run() -> None:
        shutdown()
        exitfuncs()

    return run


hydra_utils()  # at import: Hydra's is needed before any config is composed
