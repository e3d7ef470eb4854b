"""The resolvers conf/ uses: one run directory that every rank agrees on, a log file per rank, native bf16.

Registered when an entry point (`mnist_cnn.train`, `mnist_cnn.evaluate`) is imported, before Hydra composes.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def env_rank() -> int:
    """This process's global rank as its launcher announced it: torchrun, srun, Lightning's own; 0 alone."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env.get("SLURM_PROCID", "0"))
    return int(env.get("LOCAL_RANK", "0"))


def run_stamp() -> str:
    """The run folder's name (`${run_stamp:}`), the same on every rank.

    Lightning's launcher passes the folder to the ranks it starts; ranks that torchrun or srun start together
    resolve it themselves: srun's from the job and step ids, torchrun's from rank 0's clock via torchrun's store.
    """
    env, now = os.environ, datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env:  # also what a requeued job finds its hpc checkpoint in
        return f"slurm-{env['SLURM_JOB_ID']}.{env['SLURM_STEP_ID']}"
    if int(env.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in env:
        from torch.distributed import TCPStore

        store = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=2))
        key = f"mnist_cnn/run_stamp/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        if env.get("RANK") == "0":
            store.set(key, now)
        return f"torchrun-{store.get(key).decode()}"
    return now


def rank_suffix() -> str:
    """'' on rank 0, '_rank3' on rank 3 (`${rank_suffix:}`): each rank logs to its own file."""
    return f"_rank{env_rank()}" if env_rank() else ""


def on_rank_zero(value: Any) -> Any:
    """`value` on rank 0, else None (`${on_rank_zero:.hydra}`): only rank 0 saves the composed config."""
    return value if env_rank() == 0 else None


def native_precision(accelerator: str = "auto") -> str:
    """`bf16-mixed` where the hardware computes bf16 natively, else `32-true` (`${native_precision:...}`).

    GPUs: Ampere and newer (V100 and T4 emulate bf16, slower than fp32). CPUs: AVX512-BF16 or AMX, which made
    a training step 1.07x (Intel without AMX) to 2.8x (AMD Zen 5) as fast as fp32 (benchmarks/RESULTS.md).
    """
    import torch

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16-mixed" if native else "32-true"
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return "bf16-mixed" if accelerator in ("cpu", "auto") and flags & {"avx512_bf16", "amx_bf16"} else "32-true"


def register() -> None:
    for resolver in (run_stamp, rank_suffix, on_rank_zero, native_precision):  # one run_stamp per config
        OmegaConf.register_new_resolver(resolver.__name__, resolver, use_cache=resolver is run_stamp, replace=True)
