"""core/memory.py: big step buffers come from malloc's reusable heap (`keep_freed_memory`, on by default), and the
collector is paused while the libraries import, then on for the run (`gc_paused`)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import QUIET, REPO, check, metrics, real_data_dir, run_train
from hydra.utils import instantiate
from synthetic_digits import user_digits

from mnist_cnn.core.memory import end_gc_pause, gc_paused

# A fresh process, as train.py starts: where does a 16 MB buffer (a batch's activations) live?
WHERE = """
import sys, torch
from mnist_cnn.core.memory import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
x = torch.empty(4 << 20)
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print(any(int(lo, 16) <= x.data_ptr() < int(hi, 16) for lo, hi in heap))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc; a no-op elsewhere")
def test_big_buffers_come_from_the_reusable_heap_not_fresh_mappings() -> None:
    """glibc's default maps such a block fresh and unmaps it on free: every step faults it in again, page by page."""

    def in_heap(mode: str) -> bool:
        out = subprocess.run([sys.executable, "-c", WHERE, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()[-1] == "True"

    assert not in_heap("off") and in_heap("on")


def test_a_run_trains_with_the_collector_on_and_the_libraries_objects_frozen(tiny_mnist: Path, tmp_path: Path) -> None:
    """Start-up skips the collector's passes over torch's and Lightning's objects; training then collects as usual
    (a collector left off would let every cycle a step makes pile up for the whole run)."""
    probe = tmp_path / "gc.txt"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    gc_probe = f"+callbacks.gc={{_target_:inject.GcProbe,path:'{probe}'}}"
    check(run_train("debug=fdr", "data.val_size=50", "logger=none", gc_probe, f"data.data_dir={tiny_mnist}",
                    f"hydra.run.dir={tmp_path / 'run'}", *QUIET, env=env))  # fmt: skip
    enabled, frozen = probe.read_text().split()
    assert enabled == "True"
    assert int(frozen) > 100_000  # the imports' objects (~390k with torch, Lightning, Hydra)


def test_the_pause_ends_with_its_block_even_on_an_error_line() -> None:
    assert gc.isenabled()
    with pytest.raises(SystemExit), gc_paused():
        assert not gc.isenabled()
        raise SystemExit(2)  # one_line_errors' exit for a bad input
    assert gc.isenabled()


def test_a_caller_that_turned_the_collector_off_keeps_it_off() -> None:
    frozen = gc.get_freeze_count()
    gc.disable()
    try:
        with gc_paused():
            end_gc_pause()
            assert not gc.isenabled()
        assert not gc.isenabled() and gc.get_freeze_count() == frozen
    finally:
        gc.enable()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_sweeps_own_process_ends_the_pause_as_the_sweep_starts(compose_cfg: Any, command: str) -> None:
    """With a SLURM launcher a sweep's process only submits jobs and waits: nothing there would end the pause."""
    callbacks = compose_cfg(name=command).hydra.callbacks
    (sweep_gc,) = [instantiate(c) for c in callbacks.values() if c._target_.endswith("EndGcPauseInSweeps")]
    assert gc.get_freeze_count() == 0
    try:
        with gc_paused():
            sweep_gc.on_multirun_start(config=None)
            assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()  # the pytest process's objects, frozen by the call


# A command in a fresh process, the net's first forward reporting the collector's state (the demo stops there:
# it would serve forever).
FIRST_FORWARD = """
import gc, os, sys
from mnist_cnn.models.module import MNISTClassifier
real = MNISTClassifier.forward
def forward(self, images):
    if not os.environ.get("SEEN"):
        os.environ["SEEN"] = "1"
        print("gc", gc.isenabled(), gc.get_freeze_count(), flush=True)
        if sys.argv[1] == "demo":
            os._exit(0)
    return real(self, images)
MNISTClassifier.forward = forward
command, args = sys.argv[1], sys.argv[2:]
if command == "evaluate":
    from mnist_cnn.evaluate import main
    sys.argv = ["mnist-eval", *args]
    main()
else:
    import importlib
    importlib.import_module(f"mnist_cnn.infer.{command}").main(args)
"""


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "demo"])
def test_the_commands_that_load_a_model_run_it_with_the_collector_on_and_the_libraries_frozen(
    trained_run: Path, tmp_path: Path, command: str
) -> None:
    """The same pause for evaluation and the inference commands: over once the model is loaded."""
    ckpt = metrics(trained_run)["best_ckpt"]
    (digit,) = user_digits(tmp_path, 1)
    args = {
        "predict": [ckpt, str(tmp_path / digit)],
        "evaluate": [ckpt, f"data.data_dir={real_data_dir()}", f"hydra.run.dir={tmp_path / 'eval'}"],
        "export": [ckpt, "--output", str(tmp_path / "net.onnx")],
        "demo": [ckpt, "--port", "0"],
    }[command]
    proc = subprocess.run([sys.executable, "-c", FIRST_FORWARD, command, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, enabled, frozen = next(line for line in proc.stdout.splitlines() if line.startswith("gc ")).split()
    assert enabled == "True" and int(frozen) > 100_000
