"""One line on stderr, exit code 2, for every error a user can fix; Hydra's full report with HYDRA_FULL_ERROR=1.

Hydra reports its own errors (an unknown config option, a key not in the config, an unparsable override) in several
lines, anything else as a traceback. `one_line_errors()` wraps `hydra._internal.utils.run_and_report` (composing,
running, multirun) to turn the errors users cause into `error: ...` lines; real bugs keep Hydra's report.
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from typing import Any

# Environment problems with a file or folder: say which, and why, without a traceback.
FILE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST}
# (exit code, message) of the `error:` line this process exits with: a sweep's summary records it for the job
# that was running (mnist_cnn/config/sweep.py), since a job left by SystemExit returns nothing to Hydra.
EXITING: list[tuple[int, str]] = []


class UserError(Exception):
    """A problem the user can fix (bad config, missing data): reported as one line, no traceback."""

    exit_code = 2  # 128 + signal for an interruption


def first_line(err: BaseException, limit: int = 160, typed: bool = True) -> str:
    """`Type: first line` of an exception (`typed=False`: the line alone); library errors can span pages."""
    line = next(iter(str(err).strip().splitlines()), "")
    text = f"{type(err).__name__}: {line}" if line and typed else line or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lines(text: str) -> list[str]:
    """Hydra's message without its boilerplate (search path, grammar link), as clean lines."""
    boilerplate = ("Config search path", "\tprovider=", "See https://hydra.cc")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(boilerplate)]


def _bad_override(argv: list[str]) -> tuple[str, str] | None:
    """The first command-line override Hydra's grammar rejects, and why."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in (a for a in argv if not a.startswith("-")):
        try:
            parser.parse_override(arg)
        except Exception as err:  # OverrideParseException and friends
            return arg, (_lines(str(err)) or ["unparsable"])[-1]
    return None


def _not_in_struct(err: BaseException) -> str | None:
    """`trainer.max_epoch=3`: name the key, suggest the close one, say how to add a new key."""
    key, parent = getattr(err.__cause__, "full_key", None), getattr(err.__cause__, "parent_node", None)
    if not key or parent is None or "not in struct" not in str(err.__cause__):
        return None
    override = next((a for a in sys.argv[1:] if a.split("=", 1)[0].lstrip("+~") == key), key)
    leaf = key.rsplit(".", 1)[-1]
    prefix = key[: -len(leaf)]
    if "/" in key:
        dotted = f"{key.replace('/', '.')}={override.split('=', 1)[-1]}"
        return f"{override}: there is no config group {key!r}; to set a value use a dot: {dotted}"
    close = difflib.get_close_matches(leaf, [str(k) for k in parent], n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"keys there: {', '.join(map(str, parent))}"
    return f"{override}: no such key {key!r} ({hint}); to add a new key write +{override.lstrip('+')}"


def _lightning_refused(err: BaseException | None) -> str | None:
    """Lightning checks settings too (a strategy that needs a GPU, a val_check_interval beyond the epoch): its
    ValueError or MisconfigurationException, raised by Lightning's own code, is about the config."""
    refusal = isinstance(err, ValueError) or "MisconfigurationException" in [c.__name__ for c in type(err).__mro__]
    if err is not None and refusal and _raised_in(err, "lightning.", "lightning_fabric.", last=True):
        return " ".join(str(err).split())
    return None


def _raised_in(err: BaseException, *prefixes: str, last: bool = False) -> bool:
    """Whether a frame of `err`'s traceback (`last`: the one that raised it) runs in a module under `prefixes`."""
    modules: list[str] = []
    tb = err.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return any(m.startswith(prefixes) for m in (modules[-1:] if last else modules))


def _storage_refused(err: BaseException) -> str | None:
    """Optuna's study storage (`hydra.sweeper.storage`) would not open or write: a bad URL, a missing folder or
    driver, or a library version it cannot work with; raised from optuna's storage code or the database layer."""
    if not _raised_in(err, "optuna.storages", "sqlalchemy.", "alembic."):
        return None
    setting = next((a.lstrip("+") for a in sys.argv[1:] if a.lstrip("+").startswith("hydra.sweeper.storage=")), None)
    why = " ".join(first_line(err, limit=200).split())
    with suppress(ImportError, ValueError):  # PackageNotFoundError is an ImportError
        if int(metadata.version("sqlalchemy").split(".")[0]) >= 2:  # optuna 2.x asserts on its schema version
            why += '; optuna 2.x needs SQLAlchemy<2: pip install -c constraints.txt -e ".[optuna]"'
    return f"{setting or 'hydra.sweeper.storage'}: the Optuna study storage failed: {why}"


def _no_slurm(err: BaseException) -> str | None:
    """`hydra/launcher=slurm` where there is no SLURM: submitit cannot find `srun`/`sbatch`."""
    if isinstance(err, RuntimeError) and "slurm" in str(err).lower() and _raised_in(err, "submitit."):
        return (
            "hydra/launcher=slurm: this machine has no SLURM (submitit: "
            f"{first_line(err, typed=False)}); run the sweep on a SLURM login node, or here without the launcher"
        )
    return None


def describe(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for anything else."""
    import hydra.errors
    from omegaconf.errors import OmegaConfBaseException

    for e in (err, err.__cause__):  # instantiate() wraps what the constructor raised
        if isinstance(e, UserError):
            return str(e)
    if isinstance(err, hydra.errors.MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        return f"{group}={option}: no such option in config group {group!r} (available: {', '.join(err.options)})"
    if isinstance(err, hydra.errors.OverrideParseException) and (bad := _bad_override(sys.argv[1:])):
        return f"cannot parse the override {bad[0]!r}: {bad[1]} (syntax: https://hydra.cc/docs/advanced/override_grammar/basic/)"
    if isinstance(err, hydra.errors.CompactHydraException) and (
        sweep := re.search(r"(?:Ambiguous value for argument|Sweep parameters) '([^']+)'", str(err))
    ):
        return (
            f"{sweep.group(1)}: a comma list or range() is a sweep: add -m (--multirun) to run a job per value, or "
            "write [a,b] for a list, 'a,b' for a string"
        )
    if isinstance(err, hydra.errors.InstantiationException):  # a constructor failed: Lightning refused it, or a bug
        refused, key = _lightning_refused(err.__cause__), re.search(r"full_key: (\S+)", str(err))
        return f"{key.group(1)}: {refused}" if refused and key else refused
    for library_refused in (_lightning_refused, _storage_refused, _no_slurm):  # first match wins
        if message := library_refused(err):
            return message
    if isinstance(err, hydra.errors.CompactHydraException):
        return _not_in_struct(err) or "; ".join(line.rstrip(".") for line in _lines(str(err))) or type(err).__name__
    if isinstance(err, OmegaConfBaseException):
        where = getattr(err, "full_key", "") or "config"
        return f"{where}: {(_lines(str(err)) or [type(err).__name__])[0]}"
    if isinstance(err, OSError) and err.errno in FILE_ERRNOS and err.filename:
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        hint = "free some space or choose another folder" if full else "choose a writable folder"
        return f"cannot write {err.filename}: {err.strerror}; {hint} (MNIST_LOG_DIR, hydra.run.dir=)"
    return None


def exit_if_user_error(err: BaseException, log: logging.Logger | None = None, sweep_job: bool = False) -> None:
    """Print `error: ...` and exit (2, or 128 + signal for an interruption) when `err` is the user's to fix.

    Returns (and the caller re-raises) for anything else, and always under HYDRA_FULL_ERROR=1. A job of a sweep
    (`sweep_job`) only logs it and returns: Hydra records the job as failed, runs the others, then re-raises the first
    failure (its `error:` line, once); only an interruption (Ctrl-C, SIGTERM: 128 + signal) stops the sweep at once.
    """
    message = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else describe(err)
    code = getattr(err, "exit_code", 2)
    if sweep_job and code < 128:
        if log is not None:  # the job's log keeps a bug's traceback: Hydra re-raises only the sweep's first failure
            log.error("this job failed: %s", message or first_line(err), exc_info=None if message else err)
        return
    if message is None:
        return
    if log is not None:
        log.error("%s", message)  # into the run's log file too
    print(f"error: {message}", file=sys.stderr)
    EXITING.append((code, message))
    raise SystemExit(code) from None


@contextmanager
def one_line_errors() -> Iterator[None]:
    """While active, Hydra reports user errors as one `error:` line; see the module docstring."""
    try:
        from mnist_cnn.core import compat  # checks at import that Hydra still has what is patched below

        hydra_utils = compat.hydra_utils()
    except UserError as err:
        exit_if_user_error(err)
        raise
    original: Callable[[Any], Any] = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as err:
                exit_if_user_error(err)
                raise

        return original(guarded)

    setattr(hydra_utils, "run_and_report", run_and_report)  # noqa: B010  # looked up at call time by _run_hydra
    try:
        yield
    except KeyboardInterrupt:  # Ctrl-C outside training (which mnist_cnn.callbacks.guards.Interruptible handles)
        interrupted = UserError("interrupted (SIGINT) outside training; checkpoints already saved are kept")
        interrupted.exit_code = 128 + signal.SIGINT
        exit_if_user_error(interrupted)  # returns under HYDRA_FULL_ERROR=1: then the traceback
        raise
    finally:
        setattr(hydra_utils, "run_and_report", original)  # noqa: B010
