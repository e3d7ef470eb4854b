"""What a benchmark ran on: CPU model, cores, the CPU flags that decide bf16 speed, and torch's own view of them.

Speed numbers only compare on like machines: bf16 is native (fast) with AVX512-BF16 or AMX and emulated
(slower than fp32) without, so the header of every benchmark run names them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Any


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ("model name", "flags"); the platform's name elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return {"model name": platform.processor() or platform.machine()}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if v}


# avx2/avx512f: the SIMD width fp32 kernels use; avx512_bf16, amx_bf16/amx_tile: native bf16 (train.py's default)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def describe() -> dict[str, Any]:
    """The machine as the JSON output records it; `flags` is None where the OS does not list them."""
    import torch

    info = cpuinfo()
    flags = set(info["flags"].split()) if "flags" in info else None

    def probe(name: str) -> bool | None:  # torch.cpu's private probes: absent in some versions
        fn = getattr(torch.cpu, name, None)
        return bool(fn()) if callable(fn) else None

    return {
        "cpu": info["model name"],
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": None if flags is None else {f: f in flags for f in FLAGS},
        "torch": {
            "version": torch.__version__,
            "threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else None,
            "avx512_bf16": probe("_is_avx512_bf16_supported"),
            "amx_tile": probe("_is_amx_tile_supported"),
        },
        "python": platform.python_version(),
        "env": sys.prefix,
        # torchmetrics (imported by Lightning) imports scipy.signal whenever SciPy is installed (the optuna extra
        # brings it): train.py's start-up differs between environments (benchmarks/RESULTS.md)
        "scipy": importlib.util.find_spec("scipy") is not None,
    }


def summary(m: dict[str, Any]) -> str:
    """One line: enough to tell two machines apart beside a table."""
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']['version']}, Python {m['python']}"


def header(m: dict[str, Any]) -> str:
    """The benchmark's header: the machine, its CPU flags, and what torch makes of them."""

    def yn(v: bool | None) -> str:
        return "n/a" if v is None else ("yes" if v else "no")

    t = m["torch"]
    flags = "unknown (no /proc/cpuinfo)" if m["flags"] is None else " ".join(
        f"{f}={yn(v)}" for f, v in m["flags"].items()
    )  # fmt: skip
    return "\n".join([
        f"machine: {summary(m)} ({m['cores_usable']} usable by this process)",
        f"cpu flags: {flags}",
        f"torch sees: {t['threads']} threads, mkldnn={yn(t['mkldnn'])}, cpu capability {t['cpu_capability']}, "
        f"avx512_bf16={yn(t['avx512_bf16'])}, amx_tile={yn(t['amx_tile'])}",
        f"environment: {m['env']}; SciPy " + ("installed (torchmetrics imports scipy.signal into train.py's "
        "start-up)" if m["scipy"] else "absent (as in the quick start's install)"),
    ])  # fmt: skip
