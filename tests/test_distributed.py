"""Several processes, one run: DDP over CPU processes (gloo), torchrun on loopback, srun, multirun; and no rank
left behind when its launcher dies (kill -9 included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, check, metrics, real_data_dir, run_cli

# Same threads per process in every launcher (so results compare bit for bit); tests/ for the fault callbacks.
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests"), "PYTHONUNBUFFERED": "1"}
LIMIT = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "logger=none",
    "callbacks.progress_bar=null",
)
SAME = ("test/acc", "test/loss", "val/acc_best", "test/n_images")
# the README's way to run more CPU processes than this process's cores (2 in CI)
OVERSUBSCRIBE = "trainer.accelerator={_target_: lightning.pytorch.accelerators.CPUAccelerator}"
ORPHAN_BOUND_S = 20  # a rank polls its launcher every second once its imports are done (~5 s on 2 cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_dir(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    return d


def run_together(commands: list[list[str]], envs: list[dict[str, str]], timeout: float = 600) -> None:
    """Start processes together (the ranks of one run), wait for all; each must succeed."""
    procs = [
        subprocess.Popen(
            c, cwd=REPO, env={**os.environ, **ENV, **e}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c, e in zip(commands, envs, strict=True)
    ]
    for p in procs:
        out = p.communicate(timeout=timeout)[0]
        assert p.returncode == 0, out[-4000:]


def test_two_cpu_processes_train_one_run_and_count_every_test_image_once(tmp_path: Path) -> None:
    """The README's `trainer.devices=2` on a machine without GPUs: DDP over 2 gloo processes, one run folder."""
    check(
        run_cli(
            "train.py",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=100",
            "trainer.precision=32-true",
            f"data.data_dir={real_data_dir()}",
            f"hydra.run.dir={tmp_path}",
            env=ENV,
        )
    )
    m = metrics(tmp_path)
    assert m["test/n_images"] == 10_000 and m["test/acc"] > 0.9  # 5000 + 5000, no padded duplicates
    assert (tmp_path / "train_rank1.log").is_file()  # rank 1 trained in the same folder
    assert (tmp_path / "provenance.json").is_file() and (tmp_path / ".hydra" / "config.yaml").is_file()
    assert (
        list(tmp_path.glob("tensorboard/events.out.tfevents.*")) and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    )


def test_three_processes_count_each_test_image_once(tmp_path: Path, tiny_mnist: Path) -> None:
    check(
        run_cli(
            "train.py",
            "trainer=ddp_cpu",
            "trainer.devices=3",
            OVERSUBSCRIBE,
            *LIMIT,
            "data.eval_batch_size=7",
            f"data.data_dir={tiny_mnist}",
            "data.val_size=50",
            f"hydra.run.dir={tmp_path}",
            env=ENV,
        )
    )
    assert metrics(tmp_path)["test/n_images"] == 42  # 3 ranks x 2 batches of 7: 14 + 14 + 14, none repeated


def reference(tmp_path: Path, data: Path) -> dict:
    """1 node x 2 processes, started by Lightning."""
    check(
        run_cli(
            "train.py", "trainer=ddp_cpu", *LIMIT, f"data.data_dir={data}", f"hydra.run.dir={tmp_path / 'ref'}", env=ENV
        )
    )
    return metrics(tmp_path / "ref")


def test_torchrun_two_nodes_on_loopback_equals_one_node(tmp_path: Path) -> None:
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
    ]
    args = [
        "train.py",
        "trainer=ddp_cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        *LIMIT,
        f"data.data_dir={real_data_dir()}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    run_together([[*torchrun, f"--node-rank={n}", *args] for n in (0, 1)], [{}, {}])
    run = only_dir(tmp_path / "logs" / "train" / "runs")  # both nodes agreed on one folder
    assert (run / "train_rank1.log").is_file()
    two_nodes, one_node = metrics(run), reference(tmp_path, real_data_dir())
    assert {k: two_nodes[k] for k in SAME} == {k: one_node[k] for k in SAME}  # identical, not close


def test_srun_ranks_share_one_folder_under_lightnings_slurm_environment(tmp_path: Path, tiny_mnist: Path) -> None:
    """The environment an `srun --ntasks=2` step gives its tasks."""
    job = str(40000 + free_port() % 10000)  # Lightning derives the rendezvous port from the job id
    slurm = {
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NAME": "mnist",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
    }
    args = [
        sys.executable,
        "train.py",
        "trainer=ddp_cpu",
        *LIMIT,
        f"data.data_dir={tiny_mnist}",
        "data.val_size=50",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]
    run_together([args, args], [{**slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)])
    run = only_dir(tmp_path / "logs" / "train" / "runs")
    assert run.name == f"slurm-{job}.0" and (run / "train_rank1.log").is_file()
    assert metrics(run)["test/n_images"] == 120


def test_multirun_under_ddp_launches_the_sweep_once(tmp_path: Path, tiny_mnist: Path) -> None:
    """Lightning #11300: rank 1 must train its job, not start the whole sweep again."""
    proc = check(
        run_cli(
            "train.py",
            "-m",
            "model.optimizer.lr=1e-3,3e-3",
            "trainer=ddp_cpu",
            "trainer.devices=2",
            *LIMIT,
            f"data.data_dir={tiny_mnist}",
            "data.val_size=50",
            f"paths.log_dir={tmp_path}",
            env=ENV,
        )
    )
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["multiruns"]
    sweep = only_dir(tmp_path / "train" / "multiruns")  # one sweep, no duplicate from rank 1
    assert proc.stdout.count("Launching 2 jobs locally") == 1
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert len((sweep / "summary.csv").read_text().splitlines()) == 3  # a header and one row per job
    for job, lr in (("0", "0.001"), ("1", "0.003")):
        assert metrics(sweep / job)["test/n_images"] == 120
        assert (sweep / job / "train_rank1.log").is_file()  # rank 1 trained this job, in its folder
        assert not (sweep / job / "multiruns").exists()
        assert f"lr: {lr}" in (sweep / job / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize("rank", [1, 0])
def test_a_crashing_rank_fails_the_whole_run(tmp_path: Path, tiny_mnist: Path, rank: int) -> None:
    crash = f"+callbacks.crash={{_target_: faults.CrashOnRank, rank: {rank}}}"
    proc = run_cli(
        "train.py",
        "trainer=ddp_cpu",
        *LIMIT,
        crash,
        f"data.data_dir={tiny_mnist}",
        "data.val_size=50",
        f"hydra.run.dir={tmp_path}",
        env=ENV,
        timeout=300,
    )
    assert proc.returncode != 0 and f"injected crash in rank {rank}" in proc.stdout + proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def session_processes(sid: int) -> list[int]:
    """The live processes of session `sid` (the launcher's, started with start_new_session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after the name: state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("when", ["meeting", "mid_epoch"])
def test_no_rank_outlives_a_launcher_killed_with_sigkill(tmp_path: Path, tiny_mnist: Path, when: str) -> None:
    """kill -9 of the process that started the ranks: the other rank exits within ORPHAN_BOUND_S."""
    progress = tmp_path / "progress"
    pace = f"+callbacks.pace={{_target_: inject.Pace, progress: {progress}, seconds: 0.5}}"
    cmd = [
        sys.executable,
        "train.py",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        f"data.data_dir={tiny_mnist}",
        "data.val_size=50",
        "logger=none",
        pace,
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    launcher = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **ENV},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        rank1_log = tmp_path / "run" / "train_rank1.log"
        while time.monotonic() < deadline:  # the moment: rank 1 is setting up its job / training is under way
            if (rank1_log.exists() and not progress.exists()) if when == "meeting" else progress.exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"never reached {when}")
        ranks = session_processes(launcher.pid)
        assert len(ranks) >= 2, ranks
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        killed = time.monotonic()
        while (left := session_processes(launcher.pid)) and time.monotonic() - killed < ORPHAN_BOUND_S:
            time.sleep(0.2)
        assert not left, f"still alive {time.monotonic() - killed:.0f} s after the launcher's SIGKILL: {left}"
    finally:
        for pid in session_processes(launcher.pid):
            os.kill(pid, signal.SIGKILL)
