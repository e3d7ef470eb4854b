"""The CPU precision choice: bf16 only where it is native and measured to pay, measured once, shared by ranks."""

from __future__ import annotations

import json
import math
import os
import threading
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
    for name in (precision.ENV, "RANK", "LOCAL_RANK", "SLURM_NTASKS"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    state: dict[str, list[float]] = {"gains": [1.5], "calls": []}

    def measured() -> float:
        state["calls"].append(state["gains"][0])
        return state["gains"][0]

    monkeypatch.setattr(precision, "bf16_step_gain", measured)
    return state


def cached() -> dict[str, dict[str, object]]:
    return json.loads(precision.cache_file().read_text())


def new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a later run on this machine starts with: no answer in its environment."""
    monkeypatch.delenv(precision.ENV, raising=False)


def test_bf16_is_measured_once_then_read_from_the_cache(
    cpu: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [fast_precision("cpu"), fast_precision("auto"), fast_precision("cpu")] == ["bf16-mixed"] * 3
    new_process(monkeypatch)
    assert fast_precision("cpu") == "bf16-mixed"
    assert cpu["calls"] == [1.5]  # one timing for the process, none for the next run
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


def test_the_ranks_a_process_starts_inherit_its_answer(
    cpu: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu["gains"] = [1.0]
    assert fast_precision("cpu") == "32-true"  # rank 0, before Lightning's launcher starts the others
    precision.cache_file().unlink()  # nothing on disk: the environment carries the answer
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning started, with rank 0's environment
    assert fast_precision("cpu") == "32-true"
    assert cpu["calls"] == [1.0]


@pytest.mark.parametrize("env", [{"RANK": "0"}, {"LOCAL_RANK": "1"}, {"SLURM_NTASKS": "4"}])
def test_ranks_started_together_take_the_flags_answer(
    cpu: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    cpu["gains"] = [1.0]
    assert fast_precision("cpu") == "32-true"  # this node once measured and cached fp32 ...
    new_process(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert fast_precision("cpu") == "bf16-mixed"  # ... but another node's cache may differ: all ranks agree on bf16
    assert cpu["calls"] == [1.0]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"other CPU": 1}'])
def test_a_broken_cache_is_measured_again_and_rewritten(cpu: dict[str, list[float]], content: str) -> None:
    path = precision.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert fast_precision("cpu") == "bf16-mixed"
    assert cached()[precision.cpu_key()]["bf16"] is True
    assert cpu["calls"] == [1.5]


def test_first_runs_at_once_wait_for_each_other(cpu: dict[str, list[float]]) -> None:
    import fcntl

    precision.cache_file().parent.mkdir(parents=True)
    with open(precision.cache_file().with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is timing its steps
        first = threading.Thread(target=fast_precision, args=("cpu",))
        first.start()
        first.join(timeout=0.5)
        assert first.is_alive() and cpu["calls"] == []  # waits rather than time on the cores in use
        precision.write_json(precision.cache_file(), {precision.cpu_key(): {"bf16": False}, "other CPU": {}})
    first.join(timeout=10)
    assert not first.is_alive() and cpu["calls"] == []  # read what the other wrote, under the lock
    assert os.environ[precision.ENV] == "0" and "other CPU" in cached()


def test_an_unwritable_cache_costs_a_timing_per_run_not_the_run(
    cpu: dict[str, list[float]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # its folder cannot be made
    assert fast_precision("cpu") == fast_precision("cpu") == "bf16-mixed"
    new_process(monkeypatch)
    assert fast_precision("cpu") == "bf16-mixed"
    assert len(cpu["calls"]) == 2  # once per process: nothing could be kept on disk


def test_the_measurement_times_both_precisions_and_leaves_the_seeded_stream_alone() -> None:
    torch.manual_seed(0)  # the measurement may run inside a seeded run (resolved after seed_everything)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gain = precision.bf16_step_gain(batch_size=8, steps=1, trials=1)
    assert math.isfinite(gain) and 0.05 < gain < 50
    assert torch.equal(torch.rand(3), expected)
