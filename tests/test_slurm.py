"""SLURM: `sbatch scripts/slurm/train.sbatch` and `hydra/launcher=slurm` share one requeue, Lightning's own.

No SLURM here: the job's environment is set by hand, SIGUSR1 arrives mid-epoch as `--signal=USR1@90` would send
it, and a stand-in `scontrol` records the requeue and kills the job as SLURM does; the same command run again (the
requeued job) resumes from Lightning's hpc checkpoint in the same run folder.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import QUIET, REPO, compose_train
from hydra.core.hydra_config import HydraConfig

STEPS = 25  # 250 training images in batches of 10


def test_a_requeued_job_resumes_where_the_signal_stopped_it(tiny_mnist: Path, tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nkill -9 $PPID\n')  # requeue = killed, rerun
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "mnist",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODELIST": "127.0.0.1",
    }
    env = {**os.environ, **slurm, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO / "tests")}
    signal_at = "+callbacks.requeue={_target_: faults.SignalAtStep, step: 30, signal: SIGUSR1}"
    cmd = [
        sys.executable,
        "train.py",
        "data.val_size=50",
        "data.batch_size=10",
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        "trainer=cpu",
        "logger=csv",
        f"data.data_dir={tiny_mnist}",
        f"paths.log_dir={tmp_path / 'logs'}",
        signal_at,
        *QUIET,
    ]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == -9, first.stderr[-3000:]  # "requeued": SLURM ended this attempt
    assert calls.read_text().split() == ["requeue", "4242"]
    run = tmp_path / "logs" / "train" / "runs" / "slurm-4242.0"
    hpc = run / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 30

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {hpc}" in (run / "train.log").read_text()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3 * STEPS
    versions = sorted((run / "csv").glob("**/metrics.csv"))
    steps = [int(r["step"]) for r in csv.DictReader(versions[-1].open()) if r.get("train/loss")]
    assert min(steps) >= 30 and max(steps) >= 3 * STEPS - 2  # the second attempt continued, it did not restart


def test_the_sweep_launcher_asks_slurm_for_lightnings_requeue_signal(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "hydra/launcher=slurm", "trainer=ddp")
    launcher = HydraConfig.get().launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.additional_parameters.signal == "USR1@90"  # replaces submitit's own SIGUSR2
    assert launcher.tasks_per_node == launcher.gpus_per_node == 2 and cfg.trainer.strategy == "ddp"
    sbatch = (REPO / "scripts" / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --signal=SIGUSR1@90" in sbatch and "srun python train.py trainer=ddp" in sbatch
