"""Devices and DDP processes: refuse a device request the machine cannot meet; start ranks > 0 for this job only.

When Lightning starts the ranks (`trainer.devices=2`), rank 0 re-launches the script for ranks > 0, replaying the
whole command line: under `-m` each rank 1 started a whole second sweep (Lightning #11300). `job_subprocess_cmd`
re-launches *this job* in run mode instead, with its own overrides and output directory (the idea of Lightning PR
#18175). torchrun and srun start ranks themselves; config/resolvers.py makes every rank agree on the run directory.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mnist_cnn.core import compat
from mnist_cnn.core.errors import UserError

LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def job_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    """The command for rank `local_rank` of the current Hydra job: run mode, this job's overrides and dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc, spec = HydraConfig.get(), __main__.__spec__
    script = [to_absolute_path(sys.argv[0])] if spec is None else ["-m", spec.name]
    command = [sys.executable, *script, f"--config-name={hc.job.config_name}", *hc.overrides.task]
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.output_subdir=null",  # rank 0 already saved the config there
        "hydra.mode=RUN",  # a config may set MULTIRUN (hparams_search=optuna): rank > 0 must run this job only
    ]
    return command, get_original_cwd()


def requeued_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a job that submitit requeued resumes from: the newest of its run directory's
    `checkpoints/interrupted.ckpt` (saved on submitit's signal) and `last.ckpt` (a job killed without one).

    submitit (`hydra/launcher=slurm`) resubmits a timed-out or pre-empted job with its first arguments, so no
    `ckpt_path`, into the same run directory (fixed at submission): without this it would start again from epoch 0.
    A first submission's run directory holds no checkpoint; outside submitit nothing is resumed implicitly.
    """
    found = [p for p in (run_dir / "checkpoints" / n for n in ("interrupted.ckpt", "last.ckpt")) if p.is_file()]
    if not found:  # checked first: cheap, and a fresh run's answer
        return None
    try:
        import submitit

        submitit.JobEnvironment()  # raises outside a job submitit started
    except (ImportError, RuntimeError):
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    logging.getLogger(__name__).warning("requeued by submitit: resuming from %s", newest)
    return newest


def install_job_launcher() -> None:
    """Make Lightning's subprocess launcher start ranks > 0 with `job_subprocess_cmd`."""
    launcher: Any = compat.lightning_subprocess_script()
    launcher._hydra_subprocess_cmd = job_subprocess_cmd


@contextmanager
def one_job() -> Iterator[None]:
    """Leave no distributed state behind a job, so the next job of a multirun starts its own ranks.

    Lightning keeps the process group and sets LOCAL_RANK etc. in rank 0's environment; left there, the
    next job would think its ranks were started externally and wait for them forever.
    """
    before = {k: os.environ[k] for k in LAUNCH_ENV if k in os.environ}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in LAUNCH_ENV:
            os.environ.pop(key, None)
        os.environ.update(before)


def requested_devices(devices: Any) -> int | None:
    """How many devices per node `trainer.devices` asks for; None for 'auto' / -1 (all there are)."""
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, list | tuple):
        return len(devices)
    return int(devices) if str(devices).lstrip("-").isdigit() and int(devices) > 0 else None


def check_devices(accelerator: str, devices: Any) -> None:
    """Refuse, in one line, a device request this machine cannot meet, saying what it has instead."""
    import torch

    gpus, wanted = torch.cuda.device_count(), requested_devices(devices)
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise UserError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, but this machine has none ({os.cpu_count() or 1} "
            "CPU cores): use trainer=cpu, or trainer=ddp_cpu trainer.devices=N for N CPU processes"
        )
    if accelerator in ("gpu", "cuda", "auto") and gpus > 0 and wanted and wanted > gpus:
        name = torch.cuda.get_device_name(0)
        raise UserError(
            f"trainer.devices={devices} asks for {wanted} GPUs, but this machine has {gpus} ({name}): use "
            f"trainer.devices={gpus}, or trainer.accelerator=cpu trainer.devices={wanted} for CPU processes"
        )
