"""The reliability pieces in-process: atomic checkpoint writes, the signal callback, RNG state, the divergence
guard and the resumable in-memory loader (the end-to-end runs are in test_reliability.py)."""

from __future__ import annotations

import errno
import os
import random
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from mnist_cnn.callbacks.guards import Diverged, DivergenceGuard, Interrupted, Interruptible
from mnist_cnn.core.checkpoints import atomic_save, rng_states, set_rng_states
from mnist_cnn.core.errors import UserError
from mnist_cnn.data.datamodule import TensorBatches


class FakeTrainer:
    """What the callbacks read from a single-process trainer; `save_checkpoint` only records the path."""

    def __init__(self, epoch: int = 1, step: int = 7, lr: float = 0.5) -> None:
        self.current_epoch, self.global_step, self.received_sigterm = epoch, step, False
        self.strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision, launcher=None)
        self.optimizers = [SimpleNamespace(param_groups=[{"lr": lr}])]
        self.checkpoint_callback = None
        self.saved: list[Path] = []

    def save_checkpoint(self, path: Any) -> None:
        self.saved.append(Path(path))


def test_atomic_save_never_replaces_a_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.ckpt"
    atomic_save({"step": 1}, target)
    good = target.read_bytes()
    real_save = torch.save

    def disk_full(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError) as err:
        atomic_save({"step": 2}, target)
    assert str(err.value) == (
        f"cannot write checkpoint {target}: No space left on device; checkpoints saved before are unchanged"
    )
    assert target.read_bytes() == good and os.listdir(tmp_path) == ["last.ckpt"]  # no temp file left behind

    def killed(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half")
        raise KeyboardInterrupt  # Ctrl-C (or any other exception) mid-write

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2}, target)
    assert target.read_bytes() == good and os.listdir(tmp_path) == ["last.ckpt"]
    monkeypatch.setattr(torch, "save", real_save)
    atomic_save({"step": 2}, target)
    assert torch.load(target, weights_only=True) == {"step": 2}


def test_sigint_stops_at_the_next_batch_end_with_a_checkpoint(tmp_path: Path) -> None:
    callback, trainer = Interruptible(str(tmp_path)), FakeTrainer()
    previous = signal.getsignal(signal.SIGINT)
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    try:
        callback.on_train_batch_end(trainer)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGINT)  # handled: no KeyboardInterrupt in the middle of a step
        assert callback.signum == signal.SIGINT and not trainer.saved
        with pytest.raises(Interrupted) as err:
            callback.on_train_batch_end(trainer)  # type: ignore[arg-type]
    finally:
        callback.on_exception(trainer, None, RuntimeError())  # type: ignore[arg-type]
    assert err.value.exit_code == 130 and trainer.saved == [tmp_path / "interrupted.ckpt"]
    assert str(err.value).startswith(
        f"interrupted by SIGINT at epoch 1, step 7; saved {tmp_path / 'interrupted.ckpt'}; resume with: "
    )
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    callback, trainer = Interruptible(str(tmp_path)), FakeTrainer()
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    try:
        callback._handle(signal.SIGTERM, None)
        with pytest.raises(KeyboardInterrupt):
            callback._handle(signal.SIGTERM, None)
    finally:
        callback._restore()
    assert signal.getsignal(signal.SIGTERM) is not callback._handle


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def feed(guard: DivergenceGuard, trainer: FakeTrainer, losses: list[float]) -> None:
    for loss in losses:
        guard.on_before_backward(trainer, None, torch.tensor(loss))  # type: ignore[arg-type]


def test_a_loss_far_above_its_start_for_a_whole_window_stops_the_run() -> None:
    guard, trainer = DivergenceGuard(max_factor=10, window=3), FakeTrainer(epoch=0, step=6, lr=5.0)
    feed(guard, trainer, [2.0, 25.0, 30.0, 40.0, 50.0])  # the first window still holds the good start
    with pytest.raises(Diverged) as err:
        feed(guard, trainer, [60.0])
    assert str(err.value) == (
        "training diverged at epoch 0, step 6: the training loss stayed above 10x its first value (2) for 3 steps; "
        "lower model.optimizer.lr (now 5) or set trainer.gradient_clip_val; checkpoints saved before are kept"
    )


def test_spikes_are_not_divergence() -> None:
    guard, trainer = DivergenceGuard(max_factor=10, window=3), FakeTrainer()
    feed(guard, trainer, [2.0, 30.0, 1.0, 50.0, 0.5, 0.4, 0.3])


def test_nan_is_caught_before_any_checkpoint_and_at_once_under_anomaly_detection() -> None:
    trainer = FakeTrainer()
    guard = DivergenceGuard(window=100)
    feed(guard, trainer, [2.0, float("nan")])  # mid-window: no host sync on every step
    with pytest.raises(Diverged, match=r"the training loss is not finite \(nan or inf\)"):
        guard.on_save_checkpoint(trainer, None, {})  # type: ignore[arg-type]
    with torch.autograd.set_detect_anomaly(True), pytest.raises(Diverged, match="not finite"):
        feed(DivergenceGuard(window=100), trainer, [2.0, float("inf")])


def test_the_first_loss_is_kept_across_a_resume() -> None:
    guard, trainer = DivergenceGuard(window=2), FakeTrainer()
    feed(guard, trainer, [2.0, 1.0])
    assert guard.state_dict() == {"first": 2.0}
    resumed = DivergenceGuard(window=2)
    resumed.load_state_dict(guard.state_dict())
    with pytest.raises(Diverged, match=r"above 10x its first value \(2\)"):
        feed(resumed, trainer, [25.0, 30.0])


def loader(seed: int = 3) -> TensorBatches:
    labels = torch.arange(100)
    sampler: DistributedSampler = DistributedSampler(range(100), num_replicas=1, rank=0, shuffle=True, seed=seed)  # type: ignore[arg-type]
    return TensorBatches(labels.view(100, 1, 1, 1).to(torch.uint8), labels, sampler, batch_size=8)


def test_the_in_memory_loader_resumes_at_the_next_batch_of_the_same_epoch() -> None:
    first = loader()
    first.sampler.set_epoch(2)  # type: ignore[attr-defined]
    batches = iter(first)
    for _ in range(5):
        next(batches)
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 5}
    rest = [y for _, y in batches]
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)  # type: ignore[attr-defined]
    again = [y for _, y in resumed]
    assert len(again) == len(rest) == 8 and all(torch.equal(a, b) for a, b in zip(again, rest, strict=True))
    assert resumed.state_dict() == {"epoch": 2, "batches": 13}
    resumed.sampler.set_epoch(3)  # type: ignore[attr-defined]
    assert len(list(resumed)) == 13  # the next epoch is whole
    stale = loader()
    stale.load_state_dict({"epoch": 1, "batches": 5})
    stale.sampler.set_epoch(2)  # type: ignore[attr-defined]
    assert len(list(stale)) == 13  # a position from another epoch is not applied
