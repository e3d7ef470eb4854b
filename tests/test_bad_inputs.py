# ruff: noqa: E501  (the table: one case per line, messages written out in full)
"""Bad input, tried as users would: each case is a real `python train.py` that must exit non-zero with exactly
the `error:` line in the table, no traceback, and (for mistakes found before any work) no run folder at all.

Configs, data files and checkpoints; the cases run a few at a time since most stop within a second.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_tiny_mnist, write_idx
from omegaconf import OmegaConf

from mnist_cnn import CONFIG_DIR
from mnist_cnn.models.nets import SimpleCNN

COMMON = ("debug=limit", "data.val_size=50", "logger=none")
DEAD_PROXY = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
FIX_PATH = (
    "; put the four raw IDX files there, or point MNIST_DATA_DIR (or data.data_dir=) at a folder holding MNIST/raw/"
)
SWEEP = "a comma list or range() is a sweep: add -m (--multirun) to run a job per value, or write [a,b] for a list, 'a,b' for a string"
GRAMMAR = "(syntax: https://hydra.cc/docs/advanced/override_grammar/basic/)"
REFUSED_PICKLE = (
    "refused: it holds a reference to posix.system, not just tensors and plain containers; such a file could run "
    "code when loaded, so it is never unpickled"
)


@dataclass
class Case:
    args: list[str]
    message: str  # the whole `error:` line, without the prefix
    env: dict[str, str] = field(default_factory=dict)
    in_job: bool = False  # found once the run had started (the data's content): the run folder exists


def options(group: str) -> str:
    return ", ".join(sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml")))


def corrupt(tiny: Path, root: Path, name: str, fn: str, edit: Callable[[Path], object]) -> Path:
    """A copy of the tiny data set with one raw file edited by `edit(path)`."""
    shutil.copytree(tiny, root / name)
    edit(root / name / "MNIST" / "raw" / fn)
    return root / name


def lightning_ckpt(path: Path, net: dict | None = None, **extra: object) -> Path:
    """A minimal Lightning-style checkpoint: what `validate` inspects before resuming."""
    net = net or {"_target_": "mnist_cnn.models.nets.SimpleCNN", "num_classes": 10}
    hparams = {"net": net, "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "epoch": 0, "global_step": 0, **extra}, path)
    return path


class Payload:
    """Unpickling this runs a shell command: what a malicious shared checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad")


@pytest.fixture(scope="module")
def cases(bad_root: Path) -> dict[str, Case]:
    root = bad_root
    tiny = make_tiny_mnist(root / "tiny")
    raw = lambda d: d / "MNIST" / "raw"  # noqa: E731
    rng = np.random.default_rng(1)
    # -- data files
    trunc = corrupt(tiny, root, "trunc", "train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes()[:117608]))
    magic = corrupt(tiny, root, "magic", "train-labels-idx1-ubyte", lambda p: p.write_bytes(b"\0\0\x08\x03" + p.read_bytes()[4:]))  # fmt: skip
    gz = corrupt(tiny, root, "gz", "t10k-images-idx3-ubyte", lambda p: p.write_bytes(gzip.compress(p.read_bytes(), mtime=0)))  # fmt: skip
    count = corrupt(tiny, root, "count", "train-labels-idx1-ubyte", lambda p: write_idx(p, np.arange(299) % 10))
    missing = corrupt(tiny, root, "missing", "t10k-labels-idx1-ubyte", lambda p: p.unlink())
    big = corrupt(tiny, root, "big", "train-images-idx3-ubyte", lambda p: write_idx(p, rng.integers(0, 256, (300, 32, 32))))  # fmt: skip
    label = corrupt(tiny, root, "label", "train-labels-idx1-ubyte", lambda p: write_idx(p, np.where(np.arange(300) == 7, 12, np.arange(300) % 10)))  # fmt: skip
    trail = corrupt(tiny, root, "trail", "t10k-labels-idx1-ubyte", lambda p: p.write_bytes(p.read_bytes() + bytes(10)))
    empty = corrupt(tiny, root, "empty", "train-labels-idx1-ubyte", lambda p: p.write_bytes(b""))
    shutil.copytree(tiny, root / "above" / "tiny")
    a_file = root / "notes.txt"
    a_file.write_text("not a folder\n")
    # -- checkpoints
    ck = root / "ckpts"
    ck.mkdir()
    truncated = lightning_ckpt(ck / "truncated.ckpt")
    truncated.write_bytes(truncated.read_bytes()[:200])
    (ck / "text.ckpt").write_text("epoch=3 val_acc=0.99\n")
    (ck / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": {}, "x": Payload(root / "PWNED")}, ck / "payload.ckpt")
    lightning_ckpt(ck / "foreign.ckpt", {"_target_": "os.system", "command": f"touch {root / 'PWNED'}"})
    nested = {
        "_target_": "mnist_cnn.models.nets.SimpleCNN",
        "num_classes": {"_target_": "builtins.eval", "_args_": ["10"]},
    }
    lightning_ckpt(ck / "nested.ckpt", nested)
    torch.save(SimpleCNN().state_dict(), ck / "seed_script.pt")
    lightning_ckpt(ck / "other_net.ckpt", {"_target_": "mnist_cnn.models.nets.SimpleCNN", "num_classes": 7})
    this_net = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "model" / "simple_cnn.yaml").net)

    def c(*args: str, msg: str, **kw: object) -> Case:
        return Case([f"data.data_dir={tiny}", *args], msg, **kw)  # type: ignore[arg-type]

    # fmt: off
    return {
        # -- the list
        "batch_size_zero": c("data.batch_size=0", msg="data.batch_size=0 is invalid: must be an integer >= 1"),
        "batch_size_negative": c("data.batch_size=-5", msg="data.batch_size=-5 is invalid: must be an integer >= 1"),
        "batch_size_text": c("data.batch_size=abc", msg="data.batch_size='abc' is invalid: must be an integer >= 1"),
        "lr_negative": c("model.optimizer.lr=-1", msg="model.optimizer.lr=-1 is invalid: must be a number > 0"),
        "val_size_all": c("data.val_size=300", msg=f"data.val_size=300 is invalid: must be an integer in [0, 300) ({tiny} has 300 training images; 0 = no validation)"),
        "devices_zero": c("trainer.devices=0", msg="trainer.devices=0 is invalid: must be an integer >= 1, -1 (all), 'auto', or a list of device indices like [0, 1]"),
        "workers_negative": c("data.num_workers=-1", msg="data.num_workers=-1 is invalid: must be an integer >= 0"),
        "max_epochs_zero": c("trainer.max_epochs=0", msg="trainer.max_epochs=0 is invalid: must be an integer >= 1, or -1 (no limit)"),
        "unknown_option": c("trainer=tpu", msg=f"trainer=tpu: no such option in config group 'trainer' (available: {options('trainer')})"),
        "typo_key": c("trainer.max_epoch=3", msg="trainer.max_epoch=3: no such key 'trainer.max_epoch' (did you mean trainer.max_epochs?); to add a new key write +trainer.max_epoch=3"),
        # -- more, as a new user would type them
        "typo_key_added": c("+trainer.max_epoch=3", msg="trainer.max_epoch=3 is invalid: lightning.pytorch.Trainer has no argument 'max_epoch' (did you mean max_epochs?)"),
        "typo_top_key": c("sed=1", msg="sed=1: no such key 'sed' (did you mean seed?); to add a new key write +sed=1"),
        "typo_option": c("logger=tensorbaord", msg=f"logger=tensorbaord: no such option in config group 'logger' (available: {options('logger')})"),
        "slash_not_dot": c("trainer/accelerator=cpu", msg="trainer/accelerator=cpu: there is no config group 'trainer/accelerator'; to set a value use a dot: trainer.accelerator=cpu"),
        "unclosed_list": c("data.batch_size=[1,2", msg=f"cannot parse the override 'data.batch_size=[1,2': no viable alternative at input '[1,2' {GRAMMAR}"),
        "no_equals": c("batch_size", msg=f"cannot parse the override 'batch_size': missing EQUAL at '<EOF>' {GRAMMAR}"),
        "sweep_without_m": c("trainer.max_epochs=3,4", msg=f"trainer.max_epochs=3,4: {SWEEP}"),
        "bad_interpolation": c("seed=${oops}", msg="seed=${oops}: cannot resolve it: Interpolation key 'oops' not found"),
        "seed_negative": c("seed=-1", msg="seed=-1 is invalid: must be an integer in [0, 4294967295], or null"),
        "empty_data_dir": c("data.data_dir=", msg="data.data_dir='' is invalid: must be a folder path"),
        "data_dir_is_file": c(f"data.data_dir={a_file}", msg=f"data.data_dir={a_file} is a file, not a folder (it should hold MNIST/raw/)"),
        "loader_name": c("data.loader=pil", msg="data.loader='pil' is invalid: must be one of 'memory', 'torchvision'"),
        "min_above_max": c("trainer.min_epochs=5", msg="trainer.min_epochs=5 is invalid: must be <= trainer.max_epochs (2)"),
        "no_val_batches": c("trainer.limit_val_batches=0", msg="trainer.limit_val_batches=0 is invalid: must be > 0 while callbacks monitor val/acc (to train without validation: data.val_size=0)"),
        "optimizer_typo": c("model.optimizer._target_=torch.optim.Adamm", msg="model.optimizer._target_='torch.optim.Adamm' is invalid: must be an importable class or function (torch.optim has no 'Adamm'; did you mean Adam?)"),
        "scheduler_arg_typo": c("model.scheduler={_target_: torch.optim.lr_scheduler.OneCycleLR, _partial_: true, max_lrr: 0.01}", msg="model.scheduler.max_lrr=0.01 is invalid: torch.optim.lr_scheduler.OneCycleLR has no argument 'max_lrr' (did you mean max_lr?)"),
        "slurm_without_slurm": c("-m", "hydra/launcher=slurm", msg='hydra/launcher=slurm: this machine has no SLURM (submitit: Could not detect "srun", are you indeed on a slurm cluster?); run the sweep on a SLURM login node, or here without the launcher', in_job=True),
        "compile_on_cpu": c("trainer.accelerator=cpu", "model.compile=true", msg="model.compile=true is invalid: must be false on a CPU (torch.compile made this net 2.2x slower per step on CPU, after 10-60 s of compiling; use it on a GPU)"),
        "malloc_flag_text": c("keep_freed_memory=maybe", msg="keep_freed_memory='maybe' is invalid: must be true or false"),
        "net_classes": c("model.net.num_classes=5", msg="model.net.num_classes=5 is invalid: must be 10 (MNIST has ten digits)"),
        "strategy_needs_gpu": c("trainer.strategy=fsdp", msg="trainer: The strategy `fsdp` requires a GPU accelerator, but received `accelerator='cpu'`. Please set `accelerator='cuda'`, `accelerator='gpu'`, or pass a `CUDAAccelerator()` instance to use FSDP.", in_job=True),
        "net_outside_package": c("model.net._target_=os.system", msg="model.net._target_='os.system' is invalid: must be a dotted path starting with 'mnist_cnn.'"),
        "monitor_typo": c("callbacks.model_checkpoint.monitor=val/accuracy", msg="callbacks.model_checkpoint.monitor='val/accuracy' is invalid: must be one of 'val/acc', 'val/loss', 'val/acc_best', 'train/loss', 'train/acc', or null"),
        "multirun_bad_value": c("-m", "data.batch_size=0,8", msg="data.batch_size=0 is invalid: must be an integer >= 1", in_job=True),
        # -- data files
        "idx_truncated": c(f"data.data_dir={trunc}", msg=f"{raw(trunc)}/train-images-idx3-ubyte: truncated: the header declares 300 images (235216 bytes) but the file has 117608 bytes"),
        "idx_wrong_magic": c(f"data.data_dir={magic}", msg=f"{raw(magic)}/train-labels-idx1-ubyte: wrong magic number 0x00000803; an MNIST labels file starts with 0x00000801"),
        "idx_gzipped": c(f"data.data_dir={gz}", msg=f"{raw(gz)}/t10k-images-idx3-ubyte: wrong magic number 0x1f8b0800; an MNIST images file starts with 0x00000803 (it is gzip-compressed: gunzip it)"),
        "idx_count_mismatch": c(f"data.data_dir={count}", msg=f"{raw(count)}/train-images-idx3-ubyte has 300 images but {raw(count)}/train-labels-idx1-ubyte has 299 labels"),
        "idx_missing_file": c(f"data.data_dir={missing}", msg=f"{raw(missing)}/t10k-labels-idx1-ubyte is missing and downloading it failed (Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno 111] Connection refused>){FIX_PATH}", env=DEAD_PROXY, in_job=True),
        "data_dir_is_the_raw_folder": c(f"data.data_dir={raw(tiny)}", msg=f"data.data_dir={raw(tiny)} holds the MNIST files itself; give data.data_dir={tiny} (the folder that holds MNIST/raw/)"),
        "data_dir_is_the_mnist_folder": c(f"data.data_dir={tiny / 'MNIST'}", msg=f"data.data_dir={tiny / 'MNIST'} holds raw/ with the MNIST files; give data.data_dir={tiny} (the folder that holds MNIST/raw/)"),
        "data_dir_one_above": c(f"data.data_dir={root / 'above'}", msg=f"data.data_dir={root / 'above'} has no MNIST/raw/, but {raw(root / 'above' / 'tiny')} has the files: give data.data_dir={root / 'above' / 'tiny'}"),
        "idx_not_28x28": c(f"data.data_dir={big}", msg=f"{raw(big)}/train-images-idx3-ubyte: images are 32x32 pixels, MNIST's are 28x28"),
        "idx_label_not_digit": c(f"data.data_dir={label}", msg=f"{raw(label)}/train-labels-idx1-ubyte: label 12 at index 7 is not a digit 0-9"),
        "idx_trailing_bytes": c(f"data.data_dir={trail}", msg=f"{raw(trail)}/t10k-labels-idx1-ubyte: 10 bytes of unexpected data after the 120 labels its header declares"),
        "idx_empty_file": c(f"data.data_dir={empty}", msg=f"{raw(empty)}/train-labels-idx1-ubyte: truncated: 0 bytes is too short for the IDX header"),
        # -- checkpoints to resume from
        "ckpt_missing": c(f"ckpt_path={ck}/nope.ckpt", msg=f"ckpt_path={ck}/nope.ckpt: no such file"),
        "ckpt_folder": c(f"ckpt_path={ck}", msg=f"ckpt_path={ck} is a folder; give a checkpoint file in it, e.g. {ck}/last.ckpt"),
        "ckpt_truncated": c(f"ckpt_path={truncated}", msg=f"ckpt_path={truncated}: truncated or corrupt (the zip archive torch.save writes is incomplete)"),
        "ckpt_text": c(f"ckpt_path={ck}/text.ckpt", msg=f"ckpt_path={ck}/text.ckpt: not a PyTorch checkpoint file (neither a zip archive nor a pickle)"),
        "ckpt_empty": c(f"ckpt_path={ck}/empty.ckpt", msg=f"ckpt_path={ck}/empty.ckpt: an empty file (0 bytes), not a checkpoint"),
        "ckpt_code_payload": c(f"ckpt_path={ck}/payload.ckpt", msg=f"ckpt_path={ck}/payload.ckpt: {REFUSED_PICKLE}"),
        "ckpt_foreign_target": c(f"ckpt_path={ck}/foreign.ckpt", msg=f"ckpt_path={ck}/foreign.ckpt: refused: model.net._target_='os.system' is not allowed: it must start with 'mnist_cnn.'"),
        "ckpt_nested_target": c(f"ckpt_path={ck}/nested.ckpt", msg=f"ckpt_path={ck}/nested.ckpt: refused: model.net.num_classes._target_='builtins.eval' is not allowed: it must start with 'mnist_cnn.'"),
        "ckpt_bare_state_dict": c(f"ckpt_path={ck}/seed_script.pt", msg=f"ckpt_path={ck}/seed_script.pt: a PyTorch file but not a Lightning checkpoint (no 'state_dict'); a bare state_dict, such as the seed script's, cannot be resumed"),
        "ckpt_other_net": c(f"ckpt_path={ck}/other_net.ckpt", msg=f"ckpt_path={ck}/other_net.ckpt was trained with model.net={{'_target_': 'mnist_cnn.models.nets.SimpleCNN', 'num_classes': 7}}, but this run builds model.net={this_net}; resume with the same model.net"),
    }
    # fmt: on


@pytest.fixture(scope="module")
def results(
    cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Run every case (4 at a time: most exit in about a second, the in-job ones in tens of seconds)."""
    runs = tmp_path_factory.mktemp("runs")

    def one(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        case, run_dir = cases[name], runs / name
        flags, overrides = [a for a in case.args if a.startswith("-")], [a for a in case.args if a[0] != "-"]
        where = f"hydra.sweep.dir={run_dir}" if flags else f"hydra.run.dir={run_dir}"
        proc = subprocess.run(
            [sys.executable, "train.py", *flags, *COMMON, *overrides, where],
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **case.env},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        return run_dir, proc

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(one, cases), strict=True))


CASE_NAMES = [
    *("batch_size_zero", "batch_size_negative", "batch_size_text", "lr_negative", "val_size_all", "devices_zero"),
    *("workers_negative", "max_epochs_zero", "unknown_option", "typo_key", "typo_key_added", "typo_top_key"),
    *("typo_option", "slash_not_dot", "unclosed_list", "no_equals", "sweep_without_m", "bad_interpolation"),
    *("seed_negative", "empty_data_dir", "data_dir_is_file", "loader_name", "min_above_max", "no_val_batches"),
    *("optimizer_typo", "scheduler_arg_typo", "net_outside_package", "monitor_typo", "multirun_bad_value"),
    *("net_classes", "strategy_needs_gpu", "malloc_flag_text", "compile_on_cpu", "slurm_without_slurm"),
    *("data_dir_is_the_raw_folder", "data_dir_is_the_mnist_folder", "data_dir_one_above"),
    *("idx_truncated", "idx_wrong_magic", "idx_gzipped", "idx_count_mismatch", "idx_missing_file", "idx_not_28x28"),
    *("idx_label_not_digit", "idx_trailing_bytes", "idx_empty_file", "ckpt_missing", "ckpt_folder", "ckpt_truncated"),
    *("ckpt_text", "ckpt_empty", "ckpt_code_payload", "ckpt_foreign_target", "ckpt_nested_target"),
    *("ckpt_bare_state_dict", "ckpt_other_net"),
]


def test_the_table_is_complete(cases: dict[str, Case]) -> None:
    assert sorted(CASE_NAMES) == sorted(cases) and len(cases) >= 20


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_clear_line(name: str, cases: dict[str, Case], results: dict) -> None:
    run_dir, proc = results[name]
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [f"error: {cases[name].message}"]
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output
    if not cases[name].in_job:  # caught before Hydra created the run folder: nothing left behind
        assert not run_dir.exists() and not proc.stdout.strip()
        assert proc.stderr.strip() == f"error: {cases[name].message}"


def test_a_failed_download_leaves_no_folders_and_no_empty_tensorboard_run(tmp_path: Path) -> None:
    """A made-up data path: one line with the download's reason; no MNIST/raw left behind, no event file."""
    made_up, run_dir = tmp_path / "made" / "up", tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", f"data.data_dir={made_up}", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env={**os.environ, **DEAD_PROXY}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert (
        proc.returncode == 2 and "downloading it failed (Error downloading train-images-idx3-ubyte.gz: <" in proc.stderr
    )
    assert not (tmp_path / "made").exists()
    assert not list(run_dir.rglob("events.out.tfevents*"))  # TensorBoard lists no empty run


def test_a_code_payload_never_runs(results: dict, bad_root: Path) -> None:
    """Neither the pickled payload nor the config `_target_` named by a checkpoint was executed."""
    assert results["ckpt_code_payload"][1].returncode == 2 and results["ckpt_foreign_target"][1].returncode == 2
    assert (bad_root / "ckpts" / "payload.ckpt").is_file() and not (bad_root / "PWNED").exists()


def test_full_error_shows_the_traceback(tmp_path: Path, tiny_mnist: Path) -> None:
    for args, raised in (
        (["data.batch_size=0"], "UserError: data.batch_size=0 is invalid"),
        (["trainer=tpu"], "MissingConfigException: In 'train': Could not find 'trainer/tpu'"),
    ):
        proc = subprocess.run(
            [sys.executable, "train.py", *COMMON, f"data.data_dir={tiny_mnist}", *args, f"hydra.run.dir={tmp_path}"],
            cwd=REPO, env={**os.environ, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr and raised in proc.stderr


def test_help_and_cfg_still_work(tiny_mnist: Path) -> None:
    """The entry wraps Hydra: its own commands are untouched (showing a config is not running it)."""
    help_ = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert help_.returncode == 0 and "Configuration groups" in help_.stdout
    cfg = subprocess.run([sys.executable, "train.py", "--cfg", "job", "data.batch_size=0"], cwd=REPO,
                         capture_output=True, text=True)  # fmt: skip
    assert cfg.returncode == 0 and "batch_size: 0" in cfg.stdout
