"""Devices and process launching: every rank of a run writes into one directory, however the ranks were started.

Three ways to get several processes, one rule: they agree on one run directory.
- Lightning starts them (`trainer.devices=2`): rank 0 re-launches the script for ranks > 0. Lightning's
  own re-launch replays the whole command line, so under `-m` each rank 1 started a whole second sweep
  (Lightning #11300). `job_subprocess_cmd` re-launches *this job* in run mode instead: its own overrides,
  its own output directory (the idea of Lightning PR #18175).
- torchrun starts them: rank 0 picks the directory name and shares it through the store torchrun runs.
- srun starts them: SLURM's job and step ids name the directory.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mnist_cnn import UserError

LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


def run_stamp() -> str:
    """The run directory's name, identical on every rank (Hydra resolver `${run_stamp:}`)."""
    env = os.environ
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        if env["TORCHELASTIC_RUN_ID"] not in ("", "none"):
            return f"torchrun-{env['TORCHELASTIC_RUN_ID']}-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        return _shared_by_torchrun(_now())
    return _now()


def env_rank() -> int:
    """This process's global rank as its launcher announced it (0 when launched alone)."""
    env = os.environ
    if "RANK" in env:  # torchrun
        return int(env["RANK"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:  # srun
        return int(env["SLURM_PROCID"])
    return int(env.get("LOCAL_RANK", "0"))  # Lightning's own launcher, single node


def rank_suffix() -> str:
    """'' on rank 0, '_rank3' on rank 3 (Hydra resolver): each rank logs to its own file in the run dir."""
    return f"_rank{env_rank()}" if env_rank() else ""


def on_rank_zero(value: Any) -> Any:
    """`value` on rank 0, else None (Hydra resolver): only rank 0 saves the composed config."""
    return value if env_rank() == 0 else None


def _shared_by_torchrun(stamp: str) -> str:
    """Rank 0's timestamp, read by all ranks from the key-value store of torchrun's rendezvous."""
    from torch.distributed import TCPStore

    store = TCPStore(
        env_or_fail("MASTER_ADDR"), int(env_or_fail("MASTER_PORT")), is_master=False,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    key = f"mnist_cnn/run_stamp/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if os.environ.get("RANK") == "0":
        store.set(key, stamp)
    return store.get(key).decode()


def env_or_fail(name: str) -> str:
    if name not in os.environ:
        raise UserError(f"${name} is not set: start ranks with torchrun, srun or trainer.devices=N")
    return os.environ[name]


def job_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    """The command for rank `local_rank` of the current Hydra job: run mode, this job's overrides and dir."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += [f"--config-name={hc.job.config_name}", *hc.overrides.task]
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.output_subdir=null",  # rank 0 already saved the config there
        "hydra.mode=RUN",  # a config may set MULTIRUN (hparams_search=optuna): rank > 0 must run this job only
    ]
    return command, get_original_cwd()


def install_job_launcher() -> None:
    """Make Lightning's subprocess launcher start ranks > 0 with `job_subprocess_cmd`."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = job_subprocess_cmd


@contextmanager
def one_job() -> Iterator[None]:
    """Leave no distributed state behind a job, so the next job of a multirun starts its own ranks.

    Lightning keeps the process group and sets LOCAL_RANK etc. in rank 0's environment; left there, the
    next job would think its ranks were started externally and wait for them forever.
    """
    before = {k: os.environ.get(k) for k in LAUNCH_ENV}
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def requested_devices(devices: Any) -> int | None:
    """How many devices per node `trainer.devices` asks for; None for 'auto' / -1 (all there are)."""
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if str(devices).lstrip("-").isdigit() and int(devices) > 0:
        return int(devices)
    return None


def check_devices(accelerator: str, devices: Any) -> None:
    """Refuse, in one line, a device request this machine cannot meet, saying what it has instead."""
    import torch

    gpus = torch.cuda.device_count()
    wanted = requested_devices(devices)
    cores = os.cpu_count() or 1
    if accelerator in ("gpu", "cuda") and gpus == 0:
        raise UserError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, but this machine has none ({cores} CPU cores): "
            "use trainer=cpu, or trainer=ddp_cpu trainer.devices=N for N CPU processes"
        )
    if accelerator in ("gpu", "cuda", "auto") and gpus > 0 and wanted and wanted > gpus:
        name = torch.cuda.get_device_name(0)
        raise UserError(
            f"trainer.devices={devices} asks for {wanted} GPUs, but this machine has {gpus} ({name}): use "
            f"trainer.devices={gpus}, or trainer.accelerator=cpu trainer.devices={wanted} for CPU processes"
        )


def fast_precision(accelerator: str = "auto") -> str:
    """bf16-mixed where the device computes bf16 natively (Ampere+ GPUs, AVX512-BF16/AMX CPUs), else fp32.

    Hydra resolver `${fast_precision:${trainer.accelerator}}`, used by the speed presets: bf16 on a CPU
    without native support is emulated and slower than fp32.
    """
    import torch

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    cpu_bf16 = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return "bf16-mixed" if accelerator in ("cpu", "auto") and cpu_bf16 else "32-true"


def register_resolvers() -> None:
    """The resolvers conf/ uses: one run dir for all ranks, a log file per rank, the config saved once, bf16."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("rank_suffix", rank_suffix, replace=True)
    OmegaConf.register_new_resolver("on_rank_zero", on_rank_zero, replace=True)
    OmegaConf.register_new_resolver("fast_precision", fast_precision, replace=True)


register_resolvers()  # on import: anything that composes conf/ (train, evaluate, tests, notebooks) needs them
