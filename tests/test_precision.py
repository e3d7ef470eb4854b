"""The CPU precision choice: bf16 only where it is native and measured to pay, measured once, shared by ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mnist_cnn.config.resolvers import fast_precision
from mnist_cnn.models import precision


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[float]]:
    """A CPU with native bf16 (the flags), an empty cache of its own, and a step measurement that returns
    whatever the test puts in `gains` (recording each call), so no test depends on this machine's speed."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("RANK", "LOCAL_RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    state: dict[str, list[float]] = {"gains": [1.5], "calls": []}

    def measured() -> float:
        state["calls"].append(state["gains"][0])
        return state["gains"][0]

    monkeypatch.setattr(precision, "bf16_step_gain", measured)
    return state


def cached() -> dict[str, dict[str, object]]:
    return json.loads(precision.cache_file().read_text())


def test_bf16_is_measured_once_then_read_from_the_cache(cpu: dict[str, list[float]]) -> None:
    assert [fast_precision("cpu"), fast_precision("auto"), fast_precision("cpu")] == ["bf16-mixed"] * 3
    assert cpu["calls"] == [1.5]
    entry = cached()[precision.cpu_key()]
    assert entry["bf16"] is True and entry["bf16_step_speedup"] == 1.5
    assert "torch " + torch.__version__ in precision.cpu_key()


def test_native_bf16_that_does_not_pay_trains_in_fp32(cpu: dict[str, list[float]]) -> None:
    cpu["gains"] = [1.05]  # below MIN_GAIN: the gain would be lost to the run's other per-step costs
    assert fast_precision("cpu") == "32-true"
    assert cached()[precision.cpu_key()]["bf16"] is False


def test_emulated_bf16_is_never_measured(cpu: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert fast_precision("cpu") == "32-true"
    assert fast_precision("mps") == "32-true"
    assert cpu["calls"] == [] and not precision.cache_file().exists()


@pytest.mark.parametrize("env", [{"RANK": "0"}, {"LOCAL_RANK": "1"}, {"SLURM_NTASKS": "4"}])
def test_ranks_follow_the_cache_and_never_measure(
    cpu: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert fast_precision("cpu") == "bf16-mixed"  # nothing cached: every rank takes the flags' answer alike
    assert cpu["calls"] == [] and not precision.cache_file().exists()
    monkeypatch.delenv(next(iter(env)))
    cpu["gains"] = [1.0]
    assert fast_precision("cpu") == "32-true"  # the launching process measures and caches ...
    monkeypatch.setenv(*next(iter(env.items())))
    assert fast_precision("cpu") == "32-true"  # ... and the ranks it starts read that
    assert cpu["calls"] == [1.0]


def test_a_broken_or_unwritable_cache_costs_a_measurement_not_the_run(
    cpu: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = precision.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert fast_precision("cpu") == "bf16-mixed"
    assert cached()[precision.cpu_key()]["bf16"] is True  # rewritten whole
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # its folder cannot be made
    assert fast_precision("cpu") == fast_precision("cpu") == "bf16-mixed"
    assert len(cpu["calls"]) == 3  # measured each time, as nothing could be kept


def test_the_measurement_times_both_precisions_and_leaves_the_seeded_stream_alone() -> None:
    torch.manual_seed(0)  # the measurement may run inside a seeded run (resolved after seed_everything)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gain = precision.bf16_step_gain(batch_size=8, steps=1, trials=1)
    assert math.isfinite(gain) and 0.05 < gain < 50
    assert torch.equal(torch.rand(3), expected)
