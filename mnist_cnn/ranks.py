"""DDP processes under Hydra: ranks for this job only, within the machine's cores, none left behind.

A Hydra callback (conf/hydra/default.yaml) that, for every job:
- has Lightning's launcher start ranks > 0 with *this job's* command in run mode. Lightning replays the whole command
  line, so under `-m` each rank 1 started a second sweep (Lightning #11300; the idea of its PR #18175);
- refuses more CPU processes than the cores this process may use, before any starts;
- makes a rank > 0 exit within 5 s of its launching process dying, even by kill -9 (Lightning's observer already
  takes the other ranks down when one of its children dies, and `Interruptible` when rank 0 fails);
- leaves no distributed state behind, so the next job of a multirun starts its own ranks.

This is the project's one use of a private Lightning name, checked when the module is imported.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import lightning.pytorch.strategies.launchers.subprocess_script as lightning_launcher
from hydra.experimental.callback import Callback
from lightning.pytorch.accelerators import AcceleratorRegistry, CPUAccelerator
from omegaconf import DictConfig

from mnist_cnn.cli import UserError
from mnist_cnn.resolvers import env_rank

if not callable(getattr(lightning_launcher, "_hydra_subprocess_cmd", None)):
    raise ImportError(f"{lightning_launcher.__name__}._hydra_subprocess_cmd is gone: mnist-cnn needs lightning 2.6.x")
LAUNCHER_PID = "MNIST_CNN_LAUNCHER_PID"
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
log = logging.getLogger(__name__)


def job_command(local_rank: int) -> tuple[Sequence[str], str]:
    """The command of rank `local_rank` of the current Hydra job: this job's overrides, run folder, run mode."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc, spec = HydraConfig.get(), __main__.__spec__
    script = [to_absolute_path(sys.argv[0])] if spec is None else ["-m", spec.name]
    command = [sys.executable, *script, f"--config-name={hc.job.config_name}", *hc.overrides.task]
    # rank 0 saves the config; a config may set MULTIRUN (hparams_search=optuna), a rank runs its one job
    command += [f'hydra.run.dir="{hc.runtime.output_dir}"', "hydra.output_subdir=null", "hydra.mode=RUN"]
    return command, get_original_cwd()


class CoreBoundCPU(CPUAccelerator):
    """Lightning's CPU accelerator, refusing more processes than this process's usable cores."""

    @staticmethod
    def parse_devices(devices: int | str) -> int:
        wanted = CPUAccelerator.parse_devices(devices)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if wanted > cores:
            raise UserError(
                f"trainer.devices={devices} asks for {wanted} CPU processes, but this machine lets this run use "
                f"{cores} cores: use trainer.devices={cores} or fewer; to oversubscribe anyway, "
                "trainer.accelerator='{_target_: lightning.pytorch.accelerators.CPUAccelerator}'"
            )
        return wanted


def exit_with(parent: int) -> None:
    """Exit as soon as `parent` is no longer this process's parent (it died: the orphan was handed on)."""
    while os.getppid() == parent:
        time.sleep(1)
    log.error("rank %d: its launching process %d is gone; exiting", env_rank(), parent)
    logging.shutdown()
    os._exit(1)


class DDPJobs(Callback):
    """Hydra callback: Lightning-launched ranks for each job, bounded by the cores, never orphaned."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        lightning_launcher._hydra_subprocess_cmd = job_command
        AcceleratorRegistry.register("cpu", CoreBoundCPU, description=CoreBoundCPU.__doc__ or "", override=True)
        self.env = {k: os.environ[k] for k in LAUNCH_ENV if k in os.environ}
        if env_rank() == 0:  # the ranks Lightning starts inherit it: their launcher, even if it died before they ran
            os.environ[LAUNCHER_PID] = str(os.getpid())
        else:
            parent = int(os.environ.get(LAUNCHER_PID, os.getppid()))
            threading.Thread(target=exit_with, args=(parent,), daemon=True, name="exit-with-parent").start()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in LAUNCH_ENV:  # Lightning's launcher set them in this process: the next job would think its ranks
            os.environ.pop(key, None)  # were started for it, and wait for them forever
        os.environ.update(self.env)
