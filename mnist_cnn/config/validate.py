"""The composed config, checked once before any work starts: one line naming the key, the bad value, what is allowed.

Hydra composes whatever the overrides say, so `data.batch_size=abc` would reach Lightning as is and fail later in a
traceback (or never: `data.num_workers=-1`). Checked here, cheapest first (most typos are reported before Lightning
is imported): every knob's type and range (config/schema.py), each `_target_` and its argument names, the monitored
metrics, the data files' headers, the checkpoint to resume from. `ValidateConfig` runs it (conf/hydra/default.yaml).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from mnist_cnn.config.schema import RULES, is_int, lightning_rules, one_of, show
from mnist_cnn.core.checkpoints import ALLOWED_TARGETS, load_checkpoint
from mnist_cnn.core.errors import UserError, exit_if_user_error, first_line
from mnist_cnn.data import idx

_ABSENT = object()


def _get(cfg: DictConfig, key: str, resolve: bool = True) -> Any:
    """The plain value at `key`, `_ABSENT` when there is none; an unresolvable interpolation as one line."""
    try:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        return OmegaConf.to_container(value, resolve=resolve) if isinstance(value, DictConfig | ListConfig) else value
    except MissingMandatoryValue:
        raise UserError(f"{key} is missing (???): set it with {key}=VALUE") from None
    except OmegaConfBaseException as err:
        parent, _, leaf = key.rpartition(".")
        raw = OmegaConf.to_container(OmegaConf.select(cfg, parent) if parent else cfg, resolve=False)
        shown = raw.get(leaf, "?") if isinstance(raw, dict) else "?"
        raise UserError(f"{key}={shown}: cannot resolve it: {first_line(err, typed=False)}") from None


def _fail(key: str, value: Any, allowed: str) -> UserError:
    return UserError(f"{key}={show(value)} is invalid: must be {allowed}")


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f"did you mean {close[0]}?" if close else f"there is: {', '.join(options)}" if len(options) <= 12 else ""


def _locate(path: str) -> Any:
    """`a.b.C` as Hydra's instantiate finds it; when it is not there, a one-line reason with a suggestion."""
    from hydra.utils import get_object

    hydra_log = logging.getLogger("hydra.utils")  # get_object logs each miss as an ERROR before raising
    hydra_log.disabled = True
    try:
        return get_object(path)
    except Exception as err:
        parent, _, name = path.rpartition(".")
        try:
            owner = get_object(parent) if parent else None
        except Exception:
            owner = None
        if owner is None:
            raise ImportError(first_line(err.__cause__ or err)) from None
        public = [n for n in dir(owner) if not n.startswith("_") and isinstance(getattr(owner, n), type)]
        raise ImportError(f"{parent} has no {name!r}; {_suggest(name, public)}".rstrip("; ")) from None
    finally:
        hydra_log.disabled = False


def _target(key: str, node: dict[str, Any], prefix: str = "") -> None:
    """`_target_` importable (and under `prefix`), every other key one of its arguments."""
    target = node.get("_target_")
    if not isinstance(target, str) or not target.startswith(prefix):
        raise _fail(f"{key}._target_", target, f"a dotted path starting with {prefix!r}" if prefix else "a dotted path")
    try:
        obj = _locate(target)
    except Exception as err:  # ImportError, or whatever the module raised on import
        raise _fail(f"{key}._target_", target, f"an importable class or function ({err})") from None
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):  # no signature to check against
        return
    names = [p.name for p in params if p.kind is not p.VAR_POSITIONAL]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    for name, value in node.items():
        if not name.startswith("_") and name not in names:
            hint = _suggest(name, names) or "see its documentation"
            raise UserError(f"{key}.{name}={show(value)} is invalid: {target} has no argument {name!r} ({hint})")


def _check_monitors(cfg: DictConfig) -> list[str]:
    """Every callback monitors a metric the model logs (its class's MONITORABLE); returns the validation ones."""
    nodes, monitors = _get(cfg, "callbacks", resolve=False), []
    try:
        logged = getattr(_locate(str(_get(cfg, "model._target_"))), "MONITORABLE", None)
    except ImportError:
        logged = None  # an unknown model: _check_targets says so
    for name, node in (nodes if isinstance(nodes, dict) else {}).items():
        if isinstance(node, dict) and (monitor := node.get("monitor")) is not None:
            if logged is not None and monitor not in logged:
                raise _fail(f"callbacks.{name}.monitor", monitor, one_of(*logged).allowed + ", or null")
            monitors.append(monitor)
    return [m for m in monitors if m.startswith("val/")]


def _check_targets(cfg: DictConfig) -> None:
    """Every `_target_` node: the model's parts first (they need only torch), then what needs Lightning."""
    for kind, prefix in ALLOWED_TARGETS.items():
        if isinstance(node := _get(cfg, f"model.{kind}", resolve=False), dict):
            _target(f"model.{kind}", node, prefix)
    for key, rule in lightning_rules().items():
        if (value := _get(cfg, key)) is not _ABSENT and not rule.ok(value):
            raise _fail(key, value, rule.allowed)
    for key in ("data", "model", "trainer"):
        if isinstance(node := _get(cfg, key, resolve=False), dict):
            _target(key, node)
    for group in ("callbacks", "logger"):
        nodes = _get(cfg, group, resolve=False)
        for name, node in (nodes if isinstance(nodes, dict) else {}).items():
            if node is not None and not isinstance(node, dict):
                raise _fail(f"{group}.{name}", node, "a _target_ config, or null to drop it")
            if node is not None:
                _target(f"{group}.{name}", node)


def validate(cfg: DictConfig) -> None:
    """Raise `UserError` (one line) for the first bad value; silent when all is well."""
    for key, rule in RULES.items():
        if (value := _get(cfg, key)) is not _ABSENT and not rule.ok(value):
            raise _fail(key, value, rule.allowed)
    max_epochs, min_epochs = _get(cfg, "trainer.max_epochs"), _get(cfg, "trainer.min_epochs")
    if is_int(max_epochs) and is_int(min_epochs) and max_epochs != -1 and min_epochs > max_epochs:
        raise _fail("trainer.min_epochs", min_epochs, f"<= trainer.max_epochs ({max_epochs})")
    data_dir, val_size = _get(cfg, "data.data_dir"), _get(cfg, "data.val_size")
    if isinstance(data_dir, str):
        idx.check_readable_folder(Path(data_dir).expanduser())
        idx.check_layout(data_dir)
        if not idx.missing_files(data_dir):  # present: check (and read, once) now; missing: downloaded later
            n_train = len(idx.read_split(data_dir, "train")[1])
            idx.read_split(data_dir, "test")
            if is_int(val_size) and val_size >= n_train:
                allowed = f"an integer in [0, {n_train}) ({data_dir} has {n_train} training images; 0 = no validation)"
                raise _fail("data.val_size", val_size, allowed)
    if _get(cfg, "model.compile") is True and _on_cpu(_get(cfg, "trainer.accelerator")):
        raise _fail("model.compile", True, f"false on a CPU ({COMPILE_ON_CPU})")
    monitors = _check_monitors(cfg)
    if (limit := _get(cfg, "trainer.limit_val_batches")) in (0, 0.0) and val_size and monitors:
        allowed = f"> 0 while callbacks monitor {monitors[0]} (to train without validation: data.val_size=0)"
        raise _fail("trainer.limit_val_batches", limit, allowed)
    if (ckpt_path := _get(cfg, "ckpt_path")) not in (None, _ABSENT, ""):
        _check_resume(cfg, str(ckpt_path))
    _check_targets(cfg)


# Measured (benchmarks/RESULTS.md): slower per step than eager oneDNN on both CPU kinds, plus the compile itself.
COMPILE_ON_CPU = "torch.compile made this net 2.2x slower per step on CPU, after 10-60 s of compiling; use it on a GPU"


def _on_cpu(accelerator: Any) -> bool:
    if accelerator == "cpu":
        return True
    import torch

    return accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()


def _check_resume(cfg: DictConfig, ckpt_path: str) -> None:
    ckpt = load_checkpoint(ckpt_path, key="ckpt_path")
    old, new = (ckpt.get("hyper_parameters") or {}).get("net"), _get(cfg, "model.net")
    if old is not None and old != new:
        raise UserError(
            f"ckpt_path={ckpt_path} was trained with model.net={show(old)}, but this run builds "
            f"model.net={show(new)}; resume with the same model.net"
        )


# A multirun job's config error, found as the job starts; its job function raises it (`check_job`).
_JOB_ERRORS: list[UserError] = []


def check_job() -> None:
    """Raise the error `ValidateConfig` found in this multirun job's config: the job fails as any failing job
    does (Hydra records it, the sweep goes on), which a callback alone cannot do (Hydra only warns about it)."""
    if _JOB_ERRORS:
        raise _JOB_ERRORS.pop()


class ValidateConfig(Callback):
    """Hydra callback: the one check of a run's config; before Hydra creates the run folder (so a typo leaves
    nothing behind), and for each job of a multirun (whose values differ per job) as the job starts."""

    def check(self, config: DictConfig) -> None:
        validate(config)

    def _run(self, config: DictConfig) -> None:
        # Hydra turns a callback's exception into a warning and runs the job anyway: exit here instead.
        try:
            self.check(config)
        except UserError as err:
            exit_if_user_error(err)
            traceback.print_exc()  # HYDRA_FULL_ERROR=1 (Hydra would only warn about a raising callback)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._run(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            _JOB_ERRORS.clear()
            try:
                self.check(config)
            except UserError as err:  # one bad job of a sweep: fail that job only (the other jobs still run)
                _JOB_ERRORS.append(err)
