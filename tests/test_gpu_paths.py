"""Code that matters on GPUs, checked on a CPU: the EMA's fused update (no device->host read per tensor) and
`fast_precision` on GPUs that only emulate bf16."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from mnist_cnn.callbacks.ema import EMA
from mnist_cnn.config.resolvers import fast_precision
from mnist_cnn.models.module import MNISTClassifier

DECAY = 0.9  # the warm-up, (1 + n) / (10 + n), reaches it after 80 updates: the test crosses both regimes
STEPS = 90


def per_tensor_ema(averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
    """The EMA's former `avg_fn`, the reference: one `float(n)` (a device->host read) per tensor per step."""
    n = float(num_averaged)
    d = min(DECAY, (1.0 + n) / (10.0 + n))
    return averaged * d + current * (1.0 - d)


def bn_model() -> MNISTClassifier:
    torch.manual_seed(0)
    return MNISTClassifier(net={"_target_": "mnist_cnn.models.nets.BNCNN"}, optimizer={"_target_": "torch.optim.Adam"})


def train_a_little(model: MNISTClassifier) -> None:
    """A stand-in optimizer step: weights move, BN running statistics and num_batches_tracked (int) update."""
    with torch.no_grad():
        model.train()(torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8))
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


@contextlib.contextmanager
def host_reads() -> Iterator[list[str]]:
    """Record every Tensor -> Python scalar conversion (each one a device->host sync on a GPU)."""
    seen: list[str] = []
    for name in ("__float__", "__int__", "__bool__", "item"):
        original = getattr(torch.Tensor, name)

        def spy(self: Tensor, *a: Any, _original: Any = original, _name: str = name) -> Any:
            seen.append(_name)
            return _original(self, *a)

        setattr(torch.Tensor, name, spy)
    try:
        yield seen
    finally:
        for name in ("__float__", "__int__", "__bool__", "item"):
            delattr(torch.Tensor, name)  # back to torch._C.TensorBase's


def test_ema_equals_the_per_tensor_formula_without_a_host_read_per_tensor() -> None:
    model = bn_model()
    reference = AveragedModel(model, avg_fn=per_tensor_ema, use_buffers=True)
    ema = EMA(decay=DECAY)
    trainer = SimpleNamespace(global_step=0, state=SimpleNamespace(fn=TrainerFn.FITTING))
    ema.setup(trainer, model, "fit")  # type: ignore[arg-type]
    tensors = len(list(model.parameters())) + len(list(model.buffers()))
    reads: list[str] = []
    for step in range(1, STEPS + 1):
        train_a_little(model)
        trainer.global_step = step
        reference.update_parameters(model)
        with host_reads() as seen:
            ema.on_train_batch_end(trainer, model, None, None, step - 1)  # type: ignore[arg-type]
            ema.on_train_batch_end(trainer, model, None, None, step - 1)  # type: ignore[arg-type]  # no new step
        reads += seen
    # AveragedModel itself reads n_averaged twice per update (first-update check); the old avg_fn once per tensor.
    assert tensors > 20 and len(reads) <= 2 * STEPS, f"{len(reads)} host reads in {STEPS} steps"
    assert ema.updates == STEPS and ema._average_model is not None
    assert int(ema._average_model.n_averaged) == STEPS
    got, want = ema._average_model.module.state_dict(), reference.module.state_dict()
    assert got.keys() == want.keys() and any(k.endswith("num_batches_tracked") for k in got)
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)

    # Resuming restores the count, so the warm-up continues where it stopped.
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict()}
    ema.on_save_checkpoint(trainer, model, checkpoint)  # type: ignore[arg-type]
    resumed = EMA(decay=DECAY)
    resumed.setup(trainer, model, "fit")  # type: ignore[arg-type]
    resumed.on_load_checkpoint(trainer, model, checkpoint)  # type: ignore[arg-type]
    assert resumed.updates == STEPS


@pytest.mark.parametrize(
    ("native", "emulated", "expected"),
    [(True, True, "bf16-mixed"), (False, True, "32-true"), (False, False, "32-true")],  # A100+, V100/T4, older
)
def test_fast_precision_takes_bf16_only_where_the_gpu_computes_it(
    monkeypatch: pytest.MonkeyPatch, native: bool, emulated: bool, expected: str
) -> None:
    def is_bf16_supported(including_emulation: bool = True) -> bool:  # torch's signature and default
        return native or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert fast_precision("gpu") == fast_precision("auto") == expected
