"""Several processes, one run: DDP over CPU processes (gloo), torchrun on loopback, srun, multirun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FP32, REPO, check, metrics, real_data_dir, run_train

from mnist_cnn.config.launch import check_devices, job_subprocess_cmd  # noqa: F401  (imported: must not need a GPU)
from mnist_cnn.core.errors import UserError

SAME = ("test/acc", "test/loss", "val/acc_best", "n_test")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # same threads per process in every launcher, so results are bit-identical


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_dir(root: Path) -> Path:
    (d,) = [p for p in root.iterdir() if p.is_dir()]
    return d


def run_all(commands: list[list[str]], envs: list[dict[str, str]], timeout: float = 600) -> list[int]:
    """Start processes together (the ranks of one run), wait for all, return their exit codes."""
    procs = [
        subprocess.Popen(
            c, cwd=REPO, env={**os.environ, **e}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for c, e in zip(commands, envs, strict=True)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return [p.returncode for p in procs]


def test_two_cpu_processes_train_one_run_on_real_mnist(tmp_path: Path) -> None:
    """The headline command on a CPU-only machine: DDP over 2 processes, one run directory."""
    proc = check(run_train("trainer.devices=2", "trainer.max_epochs=1", *FP32, f"data.data_dir={real_data_dir()}",
                           f"paths.log_dir={tmp_path}"))  # fmt: skip
    run = only_dir(tmp_path / "train" / "runs")
    m = metrics(run)
    # half the steps of one process; fp32, seed 42 (deterministic): 0.9830, seeds 0-1: 0.9763, 0.9850
    assert m["test/acc"] >= 0.975 and m["n_test"] == 10_000
    assert (run / "train_rank1.log").is_file()  # rank 1 trained in the same directory
    assert (
        len(list(run.glob("tensorboard/events.out.tfevents.*"))) >= 1 and (run / "checkpoints" / "last.ckpt").is_file()
    )
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f"2 process(es) per node x 1 node(s), {threads} CPU thread(s) each" in proc.stdout
    assert "batch 64 per device -> global batch 128" in proc.stdout


def test_three_processes_count_each_test_image_once(tmp_path: Path) -> None:
    check(run_train("trainer=ddp_cpu", "trainer.devices=3", "trainer.max_epochs=1", "trainer.limit_train_batches=10",
                    f"data.data_dir={real_data_dir()}", f"hydra.run.dir={tmp_path}"))  # fmt: skip
    assert metrics(tmp_path)["n_test"] == 10_000  # 3334 + 3333 + 3333, no padded duplicates


def reference_run(tmp_path: Path) -> dict:
    """1 node x 2 processes, started by Lightning."""
    run = tmp_path / "reference"
    check(run_train("trainer=ddp_cpu", "debug=limit", f"data.data_dir={real_data_dir()}", f"hydra.run.dir={run}",
                    env=ONE_THREAD))  # fmt: skip
    return metrics(run)


def test_torchrun_two_nodes_on_loopback_equals_one_node(tmp_path: Path) -> None:
    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                "--master-addr=127.0.0.1", f"--master-port={port}"]  # fmt: skip
    args = ["train.py", "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2", "debug=limit",
            f"data.data_dir={real_data_dir()}", f"paths.log_dir={tmp_path / 'logs'}"]  # fmt: skip
    run_all([[*torchrun, f"--node-rank={n}", *args] for n in (0, 1)], [ONE_THREAD, ONE_THREAD])
    run = only_dir(tmp_path / "logs" / "debug" / "runs")  # both nodes agreed on one directory
    assert (run / "debug_rank1.log").is_file()
    two_nodes = metrics(run)
    one_node = reference_run(tmp_path)
    assert {k: two_nodes[k] for k in SAME} == {k: one_node[k] for k in SAME}  # identical, not close


def test_srun_ranks_share_one_directory(tmp_path: Path) -> None:
    """The environment an `srun --ntasks=2` step gives its tasks: Lightning's SLURM environment takes over."""
    job = str(40000 + free_port() % 10000)  # Lightning derives the rendezvous port from the job id
    slurm = {"SLURM_JOB_ID": job, "SLURM_JOB_NAME": "mnist", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2",
             "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_NODELIST": "127.0.0.1"}  # fmt: skip
    args = [sys.executable, "train.py", "trainer=ddp_cpu", "debug=limit", f"data.data_dir={real_data_dir()}",
            f"paths.log_dir={tmp_path / 'logs'}"]  # fmt: skip
    envs = [{**slurm, **ONE_THREAD, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in (0, 1)]
    run_all([args, args], envs)
    run = only_dir(tmp_path / "logs" / "debug" / "runs")
    assert run.name == f"slurm-{job}.0" and (run / "debug_rank1.log").is_file()
    assert "SLURM auto-requeueing enabled" in (run / "debug.log").read_text()  # Lightning saw a SLURM job
    assert metrics(run)["n_test"] == 4000  # 2 test batches of 1000 on each of the 2 ranks


def test_multirun_under_ddp_launches_the_sweep_once(tmp_path: Path) -> None:
    proc = check(run_train("-m", "model.optimizer.lr=1e-3,3e-3", "trainer=ddp_cpu", "trainer.devices=2", "debug=limit",
                           f"data.data_dir={real_data_dir()}", f"paths.log_dir={tmp_path}"))  # fmt: skip
    assert any((tmp_path / "debug").iterdir()) and [p.name for p in (tmp_path / "debug").iterdir()] == ["multiruns"]
    sweep = only_dir(tmp_path / "debug" / "multiruns")  # one sweep, no duplicate from rank 1
    assert proc.stdout.count("Launching 2 jobs locally") == 1
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, lr in (("0", "0.001"), ("1", "0.003")):
        assert metrics(sweep / job)["n_test"] == 4000
        rank1_log = (sweep / job / "debug_rank1.log").read_text()  # rank 1 trained this job, with its overrides
        assert f"model.optimizer.lr={lr}" in rank1_log and "-m" not in rank1_log.split("overrides:")[1].split("\n")[0]
        assert "2 process(es) per node" in (sweep / job / "debug.log").read_text()


@pytest.mark.parametrize("rank", [1, 0])
def test_a_crashing_rank_fails_the_whole_job(tmp_path: Path, rank: int) -> None:
    crash = f"+callbacks.crash={{_target_: tests.faults.CrashOnRank, rank: {rank}}}"
    proc = run_train("trainer=ddp_cpu", "debug=limit", crash, f"data.data_dir={real_data_dir()}",
                     f"hydra.run.dir={tmp_path}", timeout=300)  # fmt: skip
    assert proc.returncode != 0
    assert f"injected crash in rank {rank}" in proc.stdout + proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_gpu_requests_the_machine_cannot_meet(tmp_path: Path) -> None:
    gpus = torch.cuda.device_count()
    override = "trainer=gpu" if gpus == 0 else f"trainer.devices={gpus + 1}"
    proc = run_train(override, f"hydra.run.dir={tmp_path}", timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert ("but this machine has none" if gpus == 0 else f"but this machine has {gpus}") in line


def test_device_check_names_what_the_machine_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(
        UserError, match=r"^trainer.accelerator=gpu needs a CUDA GPU, but this machine has none .*trainer=cpu"
    ):
        check_devices("gpu", 1)
    check_devices("auto", 2)  # no GPU: auto means CPU processes, fine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100")
    with pytest.raises(UserError, match=r"trainer.devices=2 asks for 2 GPUs, but this machine has 1 \(NVIDIA H100\)"):
        check_devices("auto", 2)
    check_devices("cpu", 2)


def test_provenance_is_written_once(tmp_path: Path) -> None:
    check(run_train("trainer=ddp_cpu", "debug=fdr", f"data.data_dir={real_data_dir()}", f"hydra.run.dir={tmp_path}"))
    assert json.loads((tmp_path / "provenance.json").read_text())["command"]
    assert (tmp_path / ".hydra" / "config.yaml").is_file() and (tmp_path / "debug_rank1.log").is_file()


def test_slurm_sweep_launcher_config(compose_cfg: Any) -> None:
    cfg = compose_cfg("hydra/launcher=slurm", "trainer=ddp")
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 2
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    sbatch = (REPO / "scripts" / "slurm" / "train.sbatch").read_text()
    assert "srun python train.py trainer=ddp" in sbatch and "--ntasks-per-node" in sbatch


def test_optuna_search_under_ddp_runs_each_trial_once(tmp_path: Path) -> None:
    check(run_train("hparams_search=optuna", "hydra.sweeper.n_trials=2", "trainer=ddp_cpu", "trainer.devices=2",
                    "debug=limit", f"data.data_dir={real_data_dir()}", f"paths.log_dir={tmp_path}"))  # fmt: skip
    assert [p.name for p in (tmp_path / "debug").iterdir()] == ["multiruns"]
    sweep = only_dir(tmp_path / "debug" / "multiruns")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        lr = [o for o in (sweep / job / ".hydra" / "overrides.yaml").read_text().split() if "optimizer.lr=" in o]
        assert lr and lr[0] in (sweep / job / "debug_rank1.log").read_text()  # rank 1 trained this trial
        assert metrics(sweep / job)["n_test"] == 4000
