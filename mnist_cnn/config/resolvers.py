"""Hydra resolvers conf/ uses; `register_resolvers()` is called by each entry point (train, evaluate, tests).

Every rank of a run must agree on one run directory, however the ranks were started: Lightning's re-launch
(`trainer.devices=2`) passes the directory on the command line; under torchrun rank 0 picks the name and
shares it through torchrun's store; under srun SLURM's job and step ids name it.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from mnist_cnn.core.errors import UserError


def run_stamp() -> str:
    """The run directory's name, identical on every rank (Hydra resolver `${run_stamp:}`)."""
    env, now = os.environ, datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{env['SLURM_JOB_ID']}.{env.get('SLURM_STEP_ID', '0')}"
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        if env["TORCHELASTIC_RUN_ID"] not in ("", "none"):
            return f"torchrun-{env['TORCHELASTIC_RUN_ID']}-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        return _shared_by_torchrun(now)
    return now


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

    env = os.environ
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in env:
            raise UserError(f"${name} is not set: start ranks with torchrun, srun or trainer.devices=N")
    store = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(seconds=120))
    key = f"mnist_cnn/run_stamp/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if env.get("RANK") == "0":
        store.set(key, stamp)
    return store.get(key).decode()


def on_gpu(accelerator: Any) -> bool:
    """Whether `trainer.accelerator` runs on a CUDA GPU: 'gpu'/'cuda' always (check_devices refuses them where there
    is none), 'auto' where torch sees one; any other value ('cpu', 'mps', ...) never."""
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def fast_precision(accelerator: str = "auto") -> str:
    """bf16-mixed where the device computes bf16 natively and it pays, else fp32.

    Hydra resolver `${fast_precision:${trainer.accelerator}}`, used by the speed presets. GPUs: Ampere and
    newer. CPUs: AVX512-BF16 or AMX (bf16 elsewhere is emulated, slower than fp32), and a one-off
    measurement on this CPU saying bf16 is faster (`models/precision.py`).
    """
    import torch

    if on_gpu(accelerator):  # V100, T4 emulate bf16 (slower than fp32), yet is_bf16_supported() is True by default
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16-mixed" if native else "32-true"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu names: a missing one says no
    cpu_bf16 = any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    if accelerator not in ("cpu", "auto") or not cpu_bf16:
        return "32-true"
    from mnist_cnn.models.precision import bf16_pays

    return "bf16-mixed" if bf16_pays() else "32-true"


def register_resolvers() -> None:
    """The resolvers conf/ uses: one run dir for all ranks, a log file per rank, the config saved once, bf16."""
    from omegaconf import OmegaConf

    for resolver in (run_stamp, rank_suffix, on_rank_zero, fast_precision):  # cached: one run_stamp per config
        OmegaConf.register_new_resolver(resolver.__name__, resolver, use_cache=resolver is run_stamp, replace=True)
