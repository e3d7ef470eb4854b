"""Whether bf16 pays on this CPU: measured once per CPU and torch version, cached on disk.

Native bf16 (AVX512-BF16) is not the same speed-up on every CPU that has it: over fp32, both NHWC, bf16
trains the seed net 1.2-1.5x (a `train.py` epoch) to about 2x (the step alone) as fast on an EPYC Zen 5,
while on an Intel Xeon without AMX bf16 + NHWC ran within 7% of fp32 + NCHW (benchmarks/RESULTS.md, 11).
CPU flags tell native from emulated; only a measurement tells whether native pays.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from mnist_cnn.core.io import write_json

log = logging.getLogger(__name__)

# bf16 must beat fp32 by this much in the step alone to be chosen: the per-step costs outside the net (data,
# Lightning's hooks) dilute the gain in a real run, and fp32 is the precision with no rounding to reason about.
MIN_GAIN = 1.1


def cache_file() -> Path:
    """`$XDG_CACHE_HOME/mnist-cnn/precision.json` (default `~/.cache/...`): one entry per CPU and torch version."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "mnist-cnn" / "precision.json"


def cpu_key() -> str:
    """The CPU (model name, family, model: 'AMD EPYC' alone names several generations) and torch's version."""
    import platform

    import torch

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():  # the first processor's block is enough
                    break
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass
    cpu = [fields.get("model name") or platform.processor() or platform.machine()]
    cpu += [f"{name} {fields[name]}" for name in ("cpu family", "model") if name in fields]
    return ", ".join([*cpu, f"torch {torch.__version__}"])


def bf16_step_gain(batch_size: int = 128, steps: int = 5, trials: int = 3) -> float:
    """fp32 time / bf16 time for a training step of the seed net (NHWC, Adam), best of `trials` each.

    The two precisions alternate so that a VM's drift hits both; ~0.7 s on two cores.
    """
    import torch
    from torch import nn

    from mnist_cnn.models.nets import SimpleCNN

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 1, 28, 28, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    with torch.random.fork_rng(devices=[]):  # the nets' init draws from the global RNG: a seeded run keeps its stream
        nets = {bf16: SimpleCNN().to(memory_format=torch.channels_last) for bf16 in (False, True)}
    optimizers = {bf16: torch.optim.Adam(net.parameters()) for bf16, net in nets.items()}

    def run(bf16: bool, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(nets[bf16](x), y)
            optimizers[bf16].zero_grad()
            loss.backward()
            optimizers[bf16].step()
        return time.perf_counter() - start

    for bf16 in (False, True):
        run(bf16, 1)  # not timed: oneDNN builds its kernels on first use
    best = {False: float("inf"), True: float("inf")}
    for _ in range(trials):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], run(bf16, steps))
    return best[False] / best[True]


def bf16_pays() -> bool:
    """Whether bf16-mixed trains faster than fp32 here: the cached answer, else measured now and cached.

    Note:
        Only a process started on its own measures. The ranks of a multi-process run read the answer the
        launching process cached (Lightning's launcher resolves the config before it starts the others); where
        every rank starts at once (torchrun, srun) and nothing is cached, each takes bf16 without measuring, so
        that all ranks agree and none times its step on cores the others are using.
    """
    path, key = cache_file(), cpu_key()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), dict) and isinstance(cached[key].get("bf16"), bool):
        return bool(cached[key]["bf16"])
    env = os.environ
    if "RANK" in env or "LOCAL_RANK" in env or int(env.get("SLURM_NTASKS", "1")) > 1:  # one of several ranks
        return True
    gain = bf16_step_gain()
    cached[key] = {"bf16": gain >= MIN_GAIN, "bf16_step_speedup": round(gain, 2), "measured": time.strftime("%F %T")}
    choice = "bf16-mixed" if cached[key]["bf16"] else "32-true"
    log.info("a training step runs %.2fx as fast in bf16 as in fp32 on this CPU: %s (cached)", gain, choice)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cached)
    except OSError as e:  # a read-only home: measure again next time rather than fail the run
        log.info("could not cache the bf16 measurement in %s: %s", path, e)
    return bool(cached[key]["bf16"])
