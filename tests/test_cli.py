# ruff: noqa: E501  (the table: one case per line)
"""A user's mistakes, tried as users make them: each case is a real `python train.py` that must exit non-zero with
no traceback and one message naming the key or the file (and what is allowed), printed once; a run that fails
before its first step leaves no run folder behind.

Hydra reports mistakes in the command line itself (exit 1, its own words); everything else is one `error:` line
and exit 2 (mnist_cnn/cli.py). The cases run four at a time: most stop within seconds.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_mnist, run_cli, write_idx

from mnist_cnn.models.nets import SimpleCNN

COMMON = ("debug=fdr", "data.val_size=50", "logger=none")
DEAD_PROXY = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


@dataclass
class Case:
    args: list[str]
    says: list[str]  # what the message must contain: the key or file, and what is allowed
    code: int = 2  # 1: Hydra's own report of a command-line mistake
    env: dict[str, str] = field(default_factory=dict)


class Payload:
    """Unpickling this runs a shell command: what a malicious shared checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def corrupt(tiny: Path, root: Path, name: str, file: str, edit: Callable[[Path], object]) -> Path:
    """A copy of the tiny data set with one raw file edited by `edit(path)`."""
    shutil.copytree(tiny, root / name)
    edit(root / name / "MNIST" / "raw" / file)
    return root / name


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mistakes")


@pytest.fixture(scope="module")
def cases(root: Path) -> dict[str, Case]:
    tiny = make_tiny_mnist(root / "tiny")
    raw = lambda d: d / "MNIST" / "raw"  # noqa: E731
    rng = np.random.default_rng(1)
    trunc = corrupt(tiny, root, "trunc", "train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:117608]))
    magic = corrupt(
        tiny, root, "magic", "train-labels-idx1-ubyte", lambda p: p.write_bytes(b"\0\0\x08\x03" + p.read_bytes()[4:])
    )
    gz = corrupt(
        tiny, root, "gz", "t10k-images-idx3-ubyte", lambda p: p.write_bytes(gzip.compress(p.read_bytes(), mtime=0))
    )
    count = corrupt(tiny, root, "count", "train-labels-idx1-ubyte", lambda p: write_idx(p, np.arange(299) % 10))
    missing = corrupt(tiny, root, "missing", "t10k-labels-idx1-ubyte", lambda p: p.unlink())
    big = corrupt(
        tiny, root, "big", "train-images-idx3-ubyte", lambda p: write_idx(p, rng.integers(0, 256, (300, 32, 32)))
    )
    label = corrupt(
        tiny,
        root,
        "label",
        "train-labels-idx1-ubyte",
        lambda p: write_idx(p, np.where(np.arange(300) == 7, 12, np.arange(300) % 10)),
    )
    empty = corrupt(tiny, root, "empty", "train-labels-idx1-ubyte", lambda p: p.write_bytes(b""))
    ck = root / "ckpts"
    ck.mkdir()
    (ck / "text.ckpt").write_text("epoch=3 val_acc=0.99\n")
    torch.save({"state_dict": SimpleCNN().state_dict(), "epoch": 0}, ck / "whole.ckpt")
    (ck / "truncated.ckpt").write_bytes((ck / "whole.ckpt").read_bytes()[:300])
    torch.save({"state_dict": {}, "x": Payload(root / "PWNED")}, ck / "payload.ckpt")
    torch.save(SimpleCNN().state_dict(), ck / "seed_script.pt")

    def c(*args: str, says: list[str], **kw: object) -> Case:
        return Case([f"data.data_dir={tiny}", *args], says, **kw)  # type: ignore[arg-type]

    return {
        # the command line, reported by Hydra
        "typo_key": c("trainer.max_epoch=3", says=["trainer.max_epoch", "+trainer.max_epoch=3"], code=1),
        "unknown_option": c("trainer=tpu", says=["trainer/tpu", "cpu", "ddp_cpu", "gpu"], code=1),
        "sweep_without_m": c("trainer.max_epochs=3,4", says=["trainer.max_epochs=3,4", "--multirun"], code=1),
        "no_equals": c("batch_size", says=["batch_size"], code=1),
        "seed_not_a_number": c("seed=abc", says=["seed", "abc", "Integer"], code=1),
        # names and types, checked against the classes the config names
        "typo_new_key": c("+trainer.max_epoch=3", says=["trainer.max_epoch", "did you mean max_epochs?"]),
        "batch_size_text": c("data.batch_size=abc", says=["data.batch_size='abc'", "must be int"]),
        "flag_text": c("model.channels_last=maybe", says=["model.channels_last='maybe'", "must be bool"]),
        "optimizer_typo": c(
            "model.optimizer._target_=torch.optim.Adamm",
            says=["model.optimizer._target_=torch.optim.Adamm", "did you mean Adam?"],
        ),
        "scheduler_arg_typo": c(
            "model.scheduler={_target_: torch.optim.lr_scheduler.OneCycleLR, _partial_: true, max_lrr: 0.01}",
            says=["model.scheduler.max_lrr", "did you mean max_lr?"],
        ),
        # ranges, checked by the class that uses the value
        "batch_size_zero": c("data.batch_size=0", says=["data.batch_size=0 is invalid", ">= 1"]),
        "lr_negative": c("model.optimizer.lr=-1", says=["model.optimizer", "Invalid learning rate: -1"]),
        "val_size_all": c("data.val_size=300", says=["data.val_size=300 is invalid", "300 training images"]),
        "label_smoothing_one": c("model.label_smoothing=1", says=["model.label_smoothing=1", "[0, 1)"]),
        "devices_zero": c("trainer.devices=0", says=["devices", "0"]),
        "more_processes_than_cores": c(
            "trainer=cpu",
            f"trainer.devices={len(os.sched_getaffinity(0)) + 62}",
            says=[
                f"trainer.devices={len(os.sched_getaffinity(0)) + 62}",
                f"{len(os.sched_getaffinity(0))} cores",
                "CPUAccelerator",
            ],
        ),
        "gpu_on_a_cpu_machine": c("trainer.accelerator=gpu", says=["gpu backend"]),
        # data files
        "no_data_offline": c(
            f"data.data_dir={root / 'nowhere'}",
            "data.download=null",
            says=[f"{root / 'nowhere'}/MNIST/raw/train-images-idx3-ubyte is missing", "data.data_dir"],
        ),
        "download_fails": c(
            f"data.data_dir={missing}",
            says=[f"{raw(missing)}/t10k-labels-idx1-ubyte is missing and downloading it failed"],
            env=DEAD_PROXY,
        ),
        "idx_truncated": c(
            f"data.data_dir={trunc}", says=[f"{raw(trunc)}/train-images-idx3-ubyte: truncated", "declares 300 images"]
        ),
        "idx_wrong_magic": c(
            f"data.data_dir={magic}",
            says=[f"{raw(magic)}/train-labels-idx1-ubyte: wrong magic number 0x00000803", "0x00000801"],
        ),
        "idx_gzipped": c(f"data.data_dir={gz}", says=[f"{raw(gz)}/t10k-images-idx3-ubyte", "gunzip it"]),
        "idx_count_mismatch": c(
            f"data.data_dir={count}",
            says=[
                f"{raw(count)}/train-images-idx3-ubyte has 300 images but {raw(count)}/train-labels-idx1-ubyte has 299 labels"
            ],
        ),
        "idx_not_28x28": c(
            f"data.data_dir={big}", says=[f"{raw(big)}/train-images-idx3-ubyte: images are 32x32 pixels", "28x28"]
        ),
        "idx_label_out_of_range": c(
            f"data.data_dir={label}",
            says=[f"{raw(label)}/train-labels-idx1-ubyte: label 12 at index 7 is not a class 0-9"],
        ),
        "idx_empty": c(f"data.data_dir={empty}", says=[f"{raw(empty)}/train-labels-idx1-ubyte: truncated"]),
        # checkpoints to resume from
        "ckpt_missing": c(f"ckpt_path={ck}/nope.ckpt", says=[f"ckpt_path={ck}/nope.ckpt: no such file"]),
        "ckpt_folder": c(f"ckpt_path={ck}", says=[f"ckpt_path={ck}: a folder"]),
        "ckpt_text": c(
            f"ckpt_path={ck}/text.ckpt", says=[f"ckpt_path={ck}/text.ckpt: not a readable PyTorch checkpoint"]
        ),
        "ckpt_truncated": c(
            f"ckpt_path={ck}/truncated.ckpt", says=[f"ckpt_path={ck}/truncated.ckpt: empty, truncated or corrupt"]
        ),
        "ckpt_code_payload": c(
            f"ckpt_path={ck}/payload.ckpt", says=[f"ckpt_path={ck}/payload.ckpt: refused: it names code (posix.system)"]
        ),
        "ckpt_bare_state_dict": c(
            f"ckpt_path={ck}/seed_script.pt", says=[f"ckpt_path={ck}/seed_script.pt", "not a Lightning checkpoint"]
        ),
    }


@pytest.fixture(scope="module")
def results(cases: dict[str, Case], root: Path) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    def one(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        case, run_dir = cases[name], root / "runs" / name
        return run_dir, run_cli("train.py", *COMMON, *case.args, f"hydra.run.dir={run_dir}", env=case.env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(one, cases), strict=True))


def test_there_are_at_least_twenty_five_cases(cases: dict[str, Case]) -> None:
    assert len(cases) >= 25


@pytest.mark.parametrize(
    "name",
    [
        "typo_key",
        "unknown_option",
        "sweep_without_m",
        "no_equals",
        "seed_not_a_number",
        "typo_new_key",
        "batch_size_text",
        "flag_text",
        "optimizer_typo",
        "scheduler_arg_typo",
        "batch_size_zero",
        "lr_negative",
        "val_size_all",
        "label_smoothing_one",
        "devices_zero",
        "more_processes_than_cores",
        "gpu_on_a_cpu_machine",
        "no_data_offline",
        "download_fails",
        "idx_truncated",
        "idx_wrong_magic",
        "idx_gzipped",
        "idx_count_mismatch",
        "idx_not_28x28",
        "idx_label_out_of_range",
        "idx_empty",
        "ckpt_missing",
        "ckpt_folder",
        "ckpt_text",
        "ckpt_truncated",
        "ckpt_code_payload",
        "ckpt_bare_state_dict",
    ],
)
def test_a_mistake_is_one_clear_message(name: str, cases: dict[str, Case], results: dict, root: Path) -> None:
    case, (run_dir, proc) = cases[name], results[name]
    out = proc.stdout + proc.stderr
    assert proc.returncode == case.code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    if case.code == 2:
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
        assert out.count(line.removeprefix("error: ")) == 1, out[-3000:]  # printed once, not logged as well
        for part in case.says:
            assert part in line, line
        if name == "more_processes_than_cores":  # refused before any process starts: that line is all it says
            assert proc.stderr.strip() == line and not proc.stdout.strip(), out
    else:
        for part in case.says:
            assert part in out, out[-3000:]
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())  # nothing left behind
    assert not (root / "PWNED").exists()  # a checkpoint's code never runs


def test_full_error_shows_the_traceback(tiny_mnist: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train.py",
        *COMMON,
        f"data.data_dir={tiny_mnist}",
        "data.batch_size=0",
        f"hydra.run.dir={tmp_path}",
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "data.batch_size=0 is invalid" in proc.stderr


def test_help_and_cfg_still_work() -> None:
    help_ = run_cli("train.py", "--help")
    assert help_.returncode == 0 and "trainer: cpu, ddp, ddp_cpu, default, gpu" in help_.stdout
    cfg = run_cli("train.py", "--cfg", "job", "data.batch_size=7")
    assert cfg.returncode == 0 and "batch_size: 7" in cfg.stdout
