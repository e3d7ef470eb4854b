"""What the entry points promise users: a mistake ends as one `error:` line and exit 2, never a traceback.

Hydra reports its own mistakes (an unknown key or option, a bad override) before a run starts. Everything after
that goes through `entry`: the values' types are checked against the classes they configure, and what users
cause (a constructor's ValueError, a refused file, Lightning refusing a setting) becomes one line.
`HYDRA_FULL_ERROR=1` shows the traceback instead.
"""

from __future__ import annotations

import difflib
import errno
import functools
import inspect
import logging
import os
import pydoc
import shutil
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem the user can fix (a missing or corrupt file, a refused setting): reported as one line."""


def describe(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix; None for a bug (which keeps its traceback)."""
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, InstantiationException) and err.__cause__ is not None:  # the constructor refused a value
        err = err.__cause__
    elif isinstance(err, InstantiationException | OmegaConfBaseException | MisconfigurationException | UserError):
        pass
    elif isinstance(err, OSError) and err.filename and err.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC):
        return f"cannot write {err.filename}: {err.strerror}"
    else:
        return None
    return " ".join(str(err).split()) or type(err).__name__


def entry(task: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra task function (under `hydra.main`): check types, then report user errors in one line.

    In a multirun the failing job fails alone: Hydra runs the others and ends the sweep non-zero. A single run
    that fails this way leaves no run folder behind, unless it holds more than its config, logs and provenance.
    """

    @functools.wraps(task)
    def run(cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.errors import CompactHydraException
        from hydra.types import RunMode

        try:
            check_types(cfg)
            return task(cfg)
        except Exception as err:
            message = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else describe(err)
            if message is None:
                raise
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                log.error("error: %s", message)
                raise CompactHydraException(message) from None
            folder = Path(HydraConfig.get().runtime.output_dir)
            if all(p.name in (".hydra", "provenance.json") or p.suffix == ".log" for p in folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    return run


def _fits(value: Any, annotation: Any) -> tuple[bool, str]:
    """Whether `value` has the type `annotation` names, where that is int, float, bool, str or a Union of them (or
    Optional); anything richer (a class, a Literal, a tensor) is the class's own to check. Also what it wants."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = [m for m in (typing.get_args(annotation) if union else (annotation,)) if m is not type(None)]
    nullable = union and type(None) in typing.get_args(annotation)
    if not members or any(m not in (bool, int, float, str) for m in members) or (value is None and nullable):
        return True, ""
    ok = any(
        isinstance(value, bool) == (m is bool) and isinstance(value, (int, float) if m is float else m) for m in members
    )
    return ok, " or ".join(m.__name__ for m in members) + (" or null" if nullable else "")


def _check_node(node: dict[str, Any], key: str) -> None:
    """`node`'s `_target_` imports and takes each of `node`'s keys, with values of the types it annotates."""
    target = str(node["_target_"])
    obj = pydoc.locate(target)
    if obj is None:
        module, _, name = target.rpartition(".")
        close = difflib.get_close_matches(name, dir(pydoc.locate(module) or object()), n=1)
        raise UserError(
            f"{key}._target_={target}: cannot import it" + (f" (did you mean {close[0]}?)" if close else "")
        )
    try:
        try:
            params = inspect.signature(obj, eval_str=True).parameters  # type: ignore[arg-type]
        except NameError:  # an annotation only a type checker can resolve: check the names alone
            params = inspect.signature(obj).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):  # no signature to check against (a builtin)
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name, value in node.items():
        if name.startswith("_"):
            continue
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f"did you mean {close[0]}?" if close else f"it takes: {', '.join(params)}"
            raise UserError(f"{key}.{name}: {target} has no argument {name!r} ({hint})")
        ok, wanted = _fits(value, params[name].annotation)
        if not ok:
            raise UserError(f"{key}.{name}={value!r}: must be {wanted} ({target})")


def check_types(cfg: Any) -> None:
    """Every `_target_` node of the composed config checked against its class's signature (`_check_node`)."""
    from omegaconf import OmegaConf

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict) and "_target_" in node:
            _check_node(node, key)
        for k, v in node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ():
            walk(v, f"{key}.{k}" if key else str(k))

    walk(OmegaConf.to_container(cfg, resolve=True), "")
