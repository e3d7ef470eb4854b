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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mnist_cnn.core.io import write_json

log = logging.getLogger(__name__)

# bf16 must beat fp32 by this much in the step alone to be chosen: the per-step costs outside the net (data,
# Lightning's hooks) dilute the gain in a real run, and fp32 is the precision with no rounding to reason about.
MIN_GAIN = 1.1
ENV = "MNIST_CNN_BF16_PAYS"  # this process's answer, inherited by the ranks it starts


def cache_file() -> Path:
    """`$XDG_CACHE_HOME/mnist-cnn/precision.json` (default `~/.cache/...`): one entry per CPU and torch version."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "mnist-cnn" / "precision.json"


def cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo; `model name` always set (the platform's name where there is
    no /proc/cpuinfo, e.g. macOS). benchmarks/machine.py names the machine from it too."""
    import platform

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    fields["model name"] = fields.get("model name") or platform.processor() or platform.machine()
    return fields


def cpu_key() -> str:
    """The CPU (model name, family, model: 'AMD EPYC' alone names several generations), the threads torch may use
    (the gain depends on them) and torch's version."""
    import torch

    info = cpuinfo()
    cpu = [info["model name"], *(f"{name} {info[name]}" for name in ("cpu family", "model") if name in info)]
    return ", ".join([*cpu, f"{torch.get_num_threads()} threads", f"torch {torch.__version__}"])


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


def read_cache() -> dict[str, object]:
    """The cache's entries; {} where it is missing, unreadable or not a JSON object."""
    try:
        cached = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


@contextmanager
def _cache_locked() -> Iterator[None]:
    """Hold the cache's lock file (POSIX): two first runs at once time one after the other, not on shared cores,
    and neither overwrites the entry the other wrote. Without a lock (no fcntl, unwritable folder) go on."""
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)  # before fcntl: the cache is written there without it
        import fcntl

        lock = open(cache_file().with_suffix(".lock"), "a")  # noqa: SIM115 (closed by the `with` below)
    except (ImportError, OSError):
        lock = None
    if lock is None:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def bf16_pays() -> bool:
    """Whether bf16-mixed trains faster than fp32 here: this process's answer, the cached one, or measured now.

    The answer goes into `$MNIST_CNN_BF16_PAYS` ("1"/"0"): later calls in this process (Hydra resolves the
    precision several times per run) and the ranks Lightning's launcher starts, which inherit the environment,
    read it, so all of a run agrees even where nothing could be cached.

    Note:
        Ranks that start together (torchrun, srun: `RANK` or `SLURM_NTASKS` > 1 set) take bf16 without looking
        at the cache or timing, as each node's cache may differ and none should time its step on cores the
        others are using; set `trainer.precision` to choose otherwise.
    """
    env = os.environ
    if env.get(ENV) in ("0", "1"):
        return env[ENV] == "1"
    if "RANK" in env or "LOCAL_RANK" in env or int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    key = cpu_key()
    with _cache_locked():
        cached = read_cache()  # read under the lock: another first run may have just written it
        entry = cached.get(key)
        if not (isinstance(entry, dict) and isinstance(entry.get("bf16"), bool)):
            gain = bf16_step_gain()
            entry = {"bf16": gain >= MIN_GAIN, "bf16_step_speedup": round(gain, 2), "measured": time.strftime("%F %T")}
            cached[key] = entry
            choice = "bf16-mixed" if entry["bf16"] else "32-true"
            # debug: a run that then fails on bad input must print its one error line alone; the file keeps the numbers
            log.debug("a training step runs %.2fx as fast in bf16 as in fp32 on this CPU: %s", gain, choice)
            try:
                write_json(cache_file(), cached)
            except OSError as e:  # a read-only home: measure again in the next run rather than fail this one
                log.debug("could not cache the bf16 measurement in %s: %s", cache_file(), e)
    env[ENV] = "1" if entry["bf16"] else "0"
    return bool(entry["bf16"])
