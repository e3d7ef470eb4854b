"""Lightning plugins and callbacks that keep long runs safe: checkpoint IO, interruption, a divergence guard."""

from __future__ import annotations

import logging
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor

from mnist_cnn.core.checkpoints import atomic_save, load_checkpoint, rng_states, set_rng_states
from mnist_cnn.core.errors import EXITING, UserError

log = logging.getLogger(__name__)


def submitit_signal() -> int:
    """The signal submitit sends before a SLURM time limit or on preemption (its SUBMITIT_PREEMPT_SIGNAL)."""
    return int(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2))


class SafeCheckpointIO(TorchCheckpointIO):
    """The Trainer's checkpoint IO (conf/trainer/default.yaml `plugins`): mnist_cnn.core.checkpoints, both ways."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


class Interrupted(UserError):
    """Training stopped on a signal; `exit_code` follows the shell's 128 + signal number convention."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Diverged(UserError):
    """The training loss went non-finite or far above where it started."""


def resume_command(ckpt: Path) -> str:
    """This job's command again, resuming from `ckpt` into the same run folder (keeps best-checkpoint state)."""
    prog = f"python {sys.argv[0]}" if sys.argv[0].endswith(".py") else Path(sys.argv[0]).name
    try:
        hc = HydraConfig.get()
        overrides, run_dir = list(hc.overrides.task), hc.runtime.output_dir
    except ValueError:  # not under Hydra (a Trainer built by hand)
        overrides, run_dir = [a for a in sys.argv[1:] if not a.startswith("-")], None
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("ckpt_path=", "hydra.run.dir="))]
    extra = [f"ckpt_path={ckpt}"] + ([f"hydra.run.dir={run_dir}"] if run_dir else [])
    return " ".join([prog, *map(shlex.quote, keep + extra)])


class Interruptible(pl.Callback):
    """SIGINT/SIGTERM -> save `dirpath/interrupted.ckpt` at the next batch end, exit 128 + the signal number.

    Ctrl-C, `docker stop`, SLURM before the time limit or `kill` stop training at a batch boundary, and the exit
    line gives the command that resumes. Lightning's own SIGTERM handling exits 0 without a checkpoint, and a
    KeyboardInterrupt can land mid optimizer step; here the state saved is always consistent. submitit's SIGUSR2
    (`hydra/launcher=slurm`: time limit, preemption) is handled the same way, then handed to submitit's handler,
    which requeues the job; it resumes from that checkpoint (mnist_cnn/config/launch.py `requeued_checkpoint`).
    Checkpoints also carry the RNG states, and the in-memory loader its position
    (mnist_cnn.data.datamodule.TensorBatches): a resumed run continues bit for bit.
    """

    def __init__(self, dirpath: str, sync_every: int = 10) -> None:
        self.dirpath, self.sync_every = Path(dirpath), sync_every
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._rng: dict[str, Any] | None = None
        self._launcher: Any = None  # the one that started the DDP worker processes, if any

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # asked twice: stop now, as without this callback
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: stopping after this batch with a resumable checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )
        if hasattr(self._launcher, "kill"):
            self._launcher.kill(signum)  # the DDP workers get it too, as from Lightning's own handler

    def _install(self, trainer: pl.Trainer) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        self._launcher = trainer.strategy.launcher
        if trainer.received_sigterm:  # by Lightning's handler (replaced here, restored after), which exits 0
            self.signum = signal.SIGTERM
        for signum in dict.fromkeys((signal.SIGINT, signal.SIGTERM, submitit_signal())):
            self._previous[signum] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _asked(self, trainer: pl.Trainer, every: int = 1) -> bool:
        """Did any rank get a signal? Ranks must agree, or the checkpoint's barrier would hang; under DDP they
        compare notes every `every` steps rather than pay a collective on each one."""
        if getattr(trainer, "world_size", 1) > 1 and trainer.global_step % every:
            return False
        return bool(trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False))

    def _stop(self, trainer: pl.Trainer, save: bool) -> None:
        signum = self.signum or signal.SIGTERM  # None: another rank got the signal
        name = signal.Signals(signum).name
        self._restore()
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        resume = ""
        if save:
            ckpt = self.dirpath / "interrupted.ckpt"
            trainer.save_checkpoint(ckpt)
            stopped = f"interrupted by {name} at {where}; saved {ckpt}"
            resume = f"; resume with: {resume_command(ckpt)}"
        else:
            best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            stopped = f"interrupted by {name} during the final test; training had finished"
            stopped += f" and its best checkpoint is {best}" if best else ""
        # submitit's handler, restored above: it resubmits the job and exits (rank 0; other ranks return here)
        if self.signum == submitit_signal() and callable(handler := signal.getsignal(signum)):
            log.warning("%s; submitit requeues the job, which resumes from it", stopped)
            EXITING.append((128 + signum, f"{stopped}; requeued by submitit"))  # the sweep summary's row
            handler(signum, None)
        raise Interrupted(stopped + resume, signum)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)
        if self._rng is not None:  # resumed: continue the random streams where the checkpoint left them
            set_rng_states(self._rng)
            self._rng = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._asked(trainer, every=self.sync_every):
            self._stop(trainer, save=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._asked(trainer):  # the signal came during the last validation
            self._stop(trainer, save=True)
        self._restore()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.signum is not None:  # no collective here: ranks may hold different numbers of test batches
            self._stop(trainer, save=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict.get("rng")


class DivergenceGuard(pl.Callback):
    """Stop on a non-finite training loss, or one above `max_factor` x its first value for `window` steps.

    One line instead of training on garbage for hours. Checked on the device every `window` steps (no per-step
    host sync) and before every checkpoint save, so a NaN model never replaces a good checkpoint.
    """

    def __init__(self, max_factor: float = 10.0, window: int = 10) -> None:
        if max_factor <= 1 or window < 1:
            raise UserError(f"DivergenceGuard: max_factor={max_factor} must be > 1 and window={window} >= 1")
        self.max_factor, self.window = max_factor, window
        self.first: Tensor | float | None = None  # the run's first training loss (a float when loaded on a resume)
        self._nonfinite: Tensor | None = None  # any non-finite loss in the current window
        self._low: Tensor | None = None  # the lowest loss in the current window
        self._seen = 0

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        value = loss.detach().float()
        if not isinstance(self.first, Tensor):
            self.first = value.clone() if self.first is None else torch.tensor(self.first, device=value.device)
        bad = ~torch.isfinite(value)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        self._low = value if self._low is None else torch.minimum(self._low, value)
        self._seen += 1
        full = self._seen >= self.window
        if full or torch.is_anomaly_enabled():  # detect_anomaly would raise its own traceback in backward: check now
            self._check(trainer, full_window=full)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        self._check(trainer, full_window=False)  # raising here aborts the save: no NaN model on disk

    def _check(self, trainer: pl.Trainer, full_window: bool) -> None:
        if self.first is None or self._nonfinite is None or self._low is None:
            return
        first = float(self.first)
        nonfinite = bool(self._nonfinite) or not math.isfinite(first)
        too_high = full_window and bool(self._low > self.max_factor * abs(first))
        if full_window:  # a new window starts; a check in between (a save, anomaly mode) keeps counting
            self._nonfinite, self._low, self._seen = None, None, 0
        if not trainer.strategy.reduce_boolean_decision(nonfinite or too_high, all=False):
            return
        high = f"stayed above {self.max_factor:g}x its first value ({first:.3g}) for {self.window} steps"
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise Diverged(
            f"training diverged at epoch {trainer.current_epoch}, step {trainer.global_step}: the training loss "
            f"{'is not finite (nan or inf)' if nonfinite else high}; lower model.optimizer.lr (now {lr:g}) or set "
            "trainer.gradient_clip_val; checkpoints saved before are kept"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"first": None if self.first is None else float(self.first)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first = state_dict.get("first")
