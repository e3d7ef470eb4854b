"""The schema of conf/: the type and range of every knob, as rules that say what is allowed in words.

`mnist_cnn.config.validate` applies them; `RULES` needs nothing heavy, `lightning_rules()` asks Lightning's registries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnist_cnn.core import compat


def show(v: Any) -> str:
    """A value as you would write it in an override: strings quoted, so `'5'` and `5` look different."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return "null" if v is None else repr(v) if isinstance(v, str) else str(v)


@dataclass(frozen=True)
class Rule:
    allowed: str
    ok: Callable[[Any], bool]


def is_int(v: Any) -> bool:
    """An int, but not a bool (Python counts True as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def integer(lo: int, hi: int | None = None, minus_one: str = "") -> Rule:
    text = (f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]") + (
        f", or -1 ({minus_one})" if minus_one else ""
    )
    return Rule(text, lambda v: is_int(v) and ((lo <= v and (hi is None or v <= hi)) or (bool(minus_one) and v == -1)))


def number(lo: float, strict: bool, hi: float | None = None) -> Rule:
    def ok(v: Any) -> bool:
        real = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        return real and (v > lo if strict else v >= lo) and (hi is None or v < hi)

    return Rule(f"a number {'>' if strict else '>='} {lo:g}" + (f" and < {hi:g}" if hi is not None else ""), ok)


def one_of(*choices: Any, also: str = "") -> Rule:
    return Rule(
        "one of " + ", ".join(map(show, choices)) + also,
        lambda v: (not isinstance(v, bool) and v in choices) or (bool(also) and isinstance(v, dict)),
    )


def nullable(rule: Rule) -> Rule:
    return Rule(rule.allowed + ", or null", lambda v: v is None or rule.ok(v))


def batches(zero: bool) -> Rule:
    """Lightning's limit_*: an int counts batches, a float is a fraction of them."""
    lo, fraction = (0, "[0, 1]") if zero else (1, "(0, 1]")
    return Rule(
        f"an integer >= {lo} (batches) or a number in {fraction} (a fraction)",
        lambda v: (is_int(v) and v >= lo) or (isinstance(v, float) and (0 <= v <= 1 if zero else 0 < v <= 1)),
    )


def _devices(v: Any) -> bool:
    if isinstance(v, str):
        return v == "auto" or bool(re.fullmatch(r"-1|[1-9]\d*|\d+(,\d*)+", v.strip()))
    if isinstance(v, list):
        return bool(v) and all(is_int(i) and i >= 0 for i in v) and len(set(v)) == len(v)
    return is_int(v) and (v >= 1 or v == -1)


BOOL = Rule("true or false", lambda v: isinstance(v, bool))
SEED = integer(0, 4294967295)
RULES: dict[str, Rule] = {
    "seed": nullable(SEED),
    "keep_freed_memory": BOOL,
    "data.data_dir": Rule("a folder path", lambda v: isinstance(v, str) and bool(v.strip())),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.val_size": integer(0),
    "data.split_seed": integer(0),
    "data.shuffle_seed": nullable(SEED),
    "data.loader": one_of("memory", "torchvision"),
    "model.optimizer.lr": number(0, strict=True),
    "model.optimizer.weight_decay": number(0, strict=False),
    "model.optimizer.momentum": number(0, strict=False),
    "model.optimizer.eps": number(0, strict=True),
    "model.net.num_classes": Rule("10 (MNIST has ten digits)", lambda v: is_int(v) and v == 10),
    "model.compile": BOOL,
    "model.label_smoothing": number(0, strict=False, hi=1),
    "trainer.devices": Rule("an integer >= 1, -1 (all), 'auto', or a list of device indices like [0, 1]", _devices),
    "trainer.num_nodes": integer(1),
    "trainer.max_epochs": integer(1, minus_one="no limit"),
    "trainer.min_epochs": nullable(integer(0)),
    "trainer.max_steps": integer(1, minus_one="no limit"),
    "trainer.min_steps": nullable(integer(0)),
    "trainer.check_val_every_n_epoch": nullable(integer(1)),
    "trainer.val_check_interval": nullable(batches(zero=False)),
    "trainer.num_sanity_val_steps": integer(0, minus_one="all"),
    "trainer.log_every_n_steps": integer(1),
    "trainer.limit_train_batches": nullable(batches(zero=False)),
    "trainer.limit_val_batches": nullable(batches(zero=True)),
    "trainer.limit_test_batches": nullable(batches(zero=False)),
    "trainer.overfit_batches": batches(zero=True),
    "trainer.fast_dev_run": Rule("true, false or an integer >= 0", lambda v: isinstance(v, bool) or integer(0).ok(v)),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.gradient_clip_val": nullable(number(0, strict=False)),
    "trainer.gradient_clip_algorithm": nullable(one_of("norm", "value")),
    "trainer.deterministic": Rule("true, false or 'warn'", lambda v: isinstance(v, bool) or v == "warn"),
    "trainer.benchmark": nullable(BOOL),
    "trainer.profiler": nullable(one_of("simple", "advanced", "pytorch", also=", or a _target_ config")),
    **{f"trainer.{k}": BOOL for k in ("detect_anomaly", "sync_batchnorm", "use_distributed_sampler")},
}


def lightning_rules() -> dict[str, Rule]:
    """The names Lightning accepts, from its own registries (imported only once the cheap checks passed)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    strategies = ["auto", *StrategyRegistry.available_strategies()]
    return {
        "trainer.accelerator": one_of("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
        "trainer.strategy": Rule(
            f"'auto', a name in Lightning's StrategyRegistry ({', '.join(map(repr, strategies[1:5]))}, ...) or a "
            "_target_ config",
            lambda v: v in strategies or isinstance(v, dict),
        ),
        "trainer.precision": one_of(*compat.precision_names()),
    }
