"""Checkpoints that survive faults: written atomically, read as untrusted input, saved when a run is stopped."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shlex
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from mnist_cnn.cli import UserError

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path, map_location: Any = "cpu", key: str | None = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint read weights-only (pickled code is refused, never run); one line per bad file."""
    path, where = Path(path), f"{key}={path}" if key else str(path)
    if path.is_dir() or not path.is_file():
        raise UserError(f"{where}: {'a folder, not a checkpoint file' if path.is_dir() else 'no such file'}")
    with path.open("rb") as f:
        zipped = f.read(2) == b"PK"
    if path.stat().st_size == 0 or (zipped and not zipfile.is_zipfile(path)):
        raise UserError(f"{where}: empty, truncated or corrupt (torch.save writes a complete zip archive)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        code = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path)) if zipped else "unknown"
        raise UserError(f"{where}: refused: it names code ({code}), not only tensors and plain containers") from None
    except Exception as err:  # torch.load fails in many ways on a file that is not its own (IndexError, EOFError...)
        raise UserError(f"{where}: not a readable PyTorch checkpoint ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{where}: a PyTorch file but not a Lightning checkpoint (no 'state_dict')")
    return ckpt


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with a crash-safe write and a weights-only read (`load_checkpoint`).

    Note:
        Lightning's own write stages the file in the system's temp folder and moves it, a copy when that is
        another file system, without fsync: a crash or a full disk mid-copy leaves half a checkpoint. Here the temp
        file sits beside the target, is synced, then renamed over it: the old checkpoint stays until the new one
        is complete.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location or "cpu")


def resume_command(ckpt: Path) -> str:
    """This run's command again, resuming from `ckpt` into the same run folder."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    keep = [o for o in hc.overrides.task if not o.lstrip("+~").startswith(("ckpt_path=", "hydra.run.dir="))]
    prog = f"python {sys.argv[0]}" if sys.argv[0].endswith(".py") else Path(sys.argv[0]).name
    return " ".join([prog, *map(shlex.quote, [*keep, f"ckpt_path={ckpt}", f"hydra.run.dir={hc.runtime.output_dir}"])])


class Interrupted(SystemExit):
    """Training stopped on a signal; the exit code is 128 + its number, as a shell reports it."""


class Interruptible(pl.Callback):
    """Ctrl-C or SIGTERM: stop after the batch, save `dirpath/interrupted.ckpt`, print the command that resumes.

    Lightning already turns SIGTERM into a stop at the next batch boundary, agreed by every rank; Ctrl-C is sent
    the same way (a second one stops at once), so no checkpoint is taken halfway through an optimizer step.
    Checkpoints also carry torch's RNG state: with the loader's position (`TensorBatches`), a resumed run
    continues bit for bit.

    Args:
        dirpath: where `interrupted.ckpt` goes.
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath, self.signum = Path(dirpath), 0
        self._rng: torch.Tensor | None = None

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.signum:  # asked twice: stop now
            raise KeyboardInterrupt
        self.signum = signum
        signal.getsignal(signal.SIGTERM)(signum, frame)  # type: ignore[operator,misc]  # Lightning's: stop after the batch

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_sigint)
        if self._rng is not None:  # resumed: the random stream continues where the checkpoint left it
            torch.set_rng_state(self._rng)
            self._rng = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        launcher = trainer.strategy.launcher
        if not isinstance(exception, SIGTERMException):
            if launcher is not None:  # the ranks this process started would wait for it in vain; one that failed
                deadline = time.monotonic() + 5  # first may still be reporting why: 5 s for that
                for proc in getattr(launcher, "procs", ()):
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                launcher.kill(signal.SIGKILL)
            return
        signum = self.signum or signal.SIGTERM
        message = f"interrupted by {signal.Signals(signum).name} "
        if trainer.state.fn == "fit":
            trainer.save_checkpoint(ckpt := self.dirpath / "interrupted.ckpt")
            message += f"at epoch {trainer.current_epoch}, step {trainer.global_step}; saved {ckpt}; "
            message += f"resume with: {resume_command(ckpt)}"
        else:
            message += "during testing; training had finished"
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)
        raise Interrupted(128 + signum)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"torch_rng": torch.get_rng_state()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict.get("torch_rng")
