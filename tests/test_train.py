"""`python train.py` end to end, as users run it: real MNIST, real TensorBoard files, real checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FP32, REPO, check, metrics, real_data_dir, run_train
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_cnn.core.errors import UserError
from mnist_cnn.data.datamodule import MNISTDataModule
from mnist_cnn.models.module import MNISTClassifier
from mnist_cnn.models.nets import SimpleCNN

KEYS = {"test/acc", "test/loss", "n_test", "best_ckpt", "output_dir", "wall_time_s"}


def events(run_dir: Path) -> EventAccumulator:
    """All event files of the run (fit and test each open one) read back as TensorBoard would."""
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_fast_dev_run_through_the_hydra_entry(tiny_mnist: Path, tmp_path: Path) -> None:
    proc = check(run_train("debug=fdr", "data.val_size=50", f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}"))
    m = metrics(tmp_path)
    assert set(m) >= KEYS and m["n_test"] == 120 and 0 <= m["test/acc"] <= 1
    assert "test/acc" in proc.stdout and str(tmp_path) in proc.stdout  # the final summary


def test_end_to_end_one_epoch_on_real_mnist(trained_run: Path) -> None:
    m = metrics(trained_run)
    assert KEYS | {"val/acc_best"} <= set(m)
    assert m["test/acc"] >= 0.975 and m["n_test"] == 10_000
    assert 0.9 < m["val/acc_best"] <= 1 and 0 < m["test/loss"] < 0.2
    assert Path(m["best_ckpt"]).is_file() and (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert Path(m["output_dir"]) == trained_run
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "provenance.json"):
        assert (trained_run / name).is_file(), name
    prov = json.loads((trained_run / "provenance.json").read_text())
    assert {"git_commit", "git_dirty", "command", "packages"} <= set(prov) and prov["packages"]["torch"]

    acc = events(trained_run)
    (_val_step, val_acc), *_ = scalars(acc, "val/acc")
    assert val_acc == pytest.approx(m["val/acc_best"], abs=1e-6)  # one epoch: the only val score is the best
    assert scalars(acc, "test/acc")[-1][1] == pytest.approx(m["test/acc"], abs=1e-6)
    assert len(scalars(acc, "train/loss")) >= 10 and scalars(acc, "train/acc")
    assert scalars(acc, "lr-Adam") and scalars(acc, "perf/train_images_per_s")[0][1] > 0
    # HParams view: the config with real metrics (not a fake -1)
    hp = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/optimizer/lr"].number_value == pytest.approx(1e-3)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"hp/val_acc", "hp/test_acc"}
    assert scalars(acc, "hp/test_acc")[-1][1] == pytest.approx(m["test/acc"], abs=1e-6)
    assert "hp_metric" not in acc.Tags()["scalars"]


def test_checkpoint_reloads_and_reproduces_the_test_accuracy(trained_run: Path) -> None:
    best = metrics(trained_run)["best_ckpt"]
    torch.load(best, weights_only=True)  # plain containers only
    model = MNISTClassifier.load_from_checkpoint(best, map_location="cpu")  # rebuilds the net from the file
    assert isinstance(model.net, SimpleCNN)
    dm = MNISTDataModule(str(real_data_dir()))
    dm.setup()
    model.eval()
    precision = OmegaConf.load(trained_run / ".hydra" / "config.yaml").trainer.precision  # as the run tested
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        correct = sum(
            int((model(dm.on_after_batch_transfer(b, 0)[0]).argmax(1) == b[1]).sum()) for b in dm.test_dataloader()
        )
    assert correct / 10_000 == pytest.approx(metrics(trained_run)["test/acc"], abs=1e-6)


def test_checkpoint_naming_foreign_code_is_refused(trained_run: Path, tmp_path: Path) -> None:
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["net"] = {"_target_": "os.system", "command": "echo pwned"}
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(UserError, match=r"model.net._target_='os.system' is not allowed"):
        MNISTClassifier.load_from_checkpoint(bad)


def test_resume_continues_where_it_stopped(trained_run: Path, tmp_path: Path) -> None:
    last = trained_run / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    check(run_train(f"ckpt_path={last}", "trainer.max_epochs=2", "trainer.limit_train_batches=50", *FP32,
                    f"data.data_dir={real_data_dir()}", f"hydra.run.dir={tmp_path}"))  # fmt: skip
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0 and resumed["epoch"] == 1  # the second epoch, not a fresh first one
    assert resumed["global_step"] == first["global_step"] + 50
    steps = [s for s, _ in scalars(events(tmp_path), "train/loss")]
    assert min(steps) >= first["global_step"]  # TensorBoard continues at the old global step
    assert metrics(tmp_path)["test/acc"] >= 0.975  # started from the trained weights


def test_seed_recipe_trains_on_all_images_without_validation(tiny_mnist: Path, tmp_path: Path) -> None:
    check(run_train("experiment=seed", f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}"))
    m = metrics(tmp_path)
    assert "val/acc_best" not in m and Path(m["best_ckpt"]).is_file()
    assert torch.load(m["best_ckpt"], weights_only=True)["global_step"] == 5  # 300 images / 64 -> 5 steps


def test_fast_preset_reaches_99_percent_on_real_mnist(tmp_path: Path) -> None:
    """The issue's check, as users run it: seed 1, the official test set, >= 99.0% (time lives in the benchmark)."""
    # fp32: the preset's bf16 follows the CPU, and the score with it. fp32 on CPU is deterministic: seed 1 scores
    # 0.9912 (12 images to spare), seeds 0-4 0.9904-0.9922.
    fp32 = "trainer.precision=32-true"
    check(run_train("experiment=fast", "seed=1", fp32, f"data.data_dir={real_data_dir()}", f"hydra.run.dir={tmp_path}"))
    m = metrics(tmp_path)
    assert m["n_test"] == 10000 and m["test/acc"] >= 0.990
    ckpt = torch.load(m["best_ckpt"], weights_only=True)
    assert ckpt["global_step"] == 700  # 1.5 epochs of 128 images: max_steps, not max_epochs, ends it
    assert [k for k, _ in SimpleCNN().named_parameters()] == [
        k.removeprefix("net.") for k in ckpt["state_dict"] if k.startswith("net.")
    ]  # the seed's layers


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_other_loggers(tiny_mnist: Path, tmp_path: Path, logger: str) -> None:
    check(
        run_train(
            f"logger={logger}",
            "debug=limit",
            "data.val_size=50",
            f"data.data_dir={tiny_mnist}",
            f"hydra.run.dir={tmp_path}",
        )
    )
    assert not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    if logger == "csv":
        assert "test/acc" in (tmp_path / "csv" / "metrics.csv").read_text()


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def as_nobody(cmd: list[str], home: Path) -> subprocess.CompletedProcess:
    """Run as an unprivileged user who may read everything (the venv lives under /root) but write nothing of root's."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to test permissions as a non-root user")
    caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"] if os.geteuid() == 0 else []
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *caps] if os.geteuid() == 0 else []
    env = {**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(prefix + cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_read_only_data_folder(tmp_path: Path) -> None:
    data = real_data_dir()
    before = tree_hash(data)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    probe = as_nobody([sys.executable, "-c", f"open({str(data / 'MNIST' / 'probe')!r}, 'w')"], out)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr  # the folder really is read-only to it
    check(
        as_nobody(
            [
                sys.executable,
                "train.py",
                "debug=limit",
                f"data.data_dir={data}",
                f"hydra.run.dir={out / 'run'}",
            ],
            out,
        )
    )
    assert metrics(out / "run")["n_test"] > 0
    assert tree_hash(data) == before


def test_missing_data_and_no_network_is_one_clear_line(tmp_path: Path) -> None:
    dead_proxy = "http://127.0.0.1:9"  # nothing listens there: every download fails at once
    proc = run_train(f"data.data_dir={tmp_path / 'empty'}", f"hydra.run.dir={tmp_path / 'run'}",
                     env={"http_proxy": dead_proxy, "https_proxy": dead_proxy, "no_proxy": ""})  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MNIST is not in" in errors[0] and "MNIST_DATA_DIR" in errors[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_last_checkpoint_is_the_latest_epoch_even_without_a_new_best(tiny_mnist: Path, tmp_path: Path) -> None:
    """mode=min on val/acc: epoch 0 stays "best" while last.ckpt must still follow every epoch."""
    check(run_train("debug=limit", "data.val_size=50", "callbacks.model_checkpoint.mode=min",
                    f"data.data_dir={tiny_mnist}", f"hydra.run.dir={tmp_path}"))  # fmt: skip
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert Path(metrics(tmp_path)["best_ckpt"]).name == "epoch_000.ckpt"
