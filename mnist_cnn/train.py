"""Training entry point: compose the Hydra config, fit, test the best checkpoint, write metrics.json.

`python train.py key=value ...` and the `mnist-train` console script both land in `main`.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_cnn import CONFIG_DIR, atomic_write, keep_freed_memory
from mnist_cnn.distributed import check_devices, install_job_launcher, one_job  # also registers conf's resolvers
from mnist_cnn.errors import exit_if_user_error, one_line_errors

log = logging.getLogger("mnist_cnn.train")
JOBS_STARTED = 0  # jobs this process has begun: a multirun's later jobs skip the imports, so start-up counts from them
PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "torchmetrics", "tensorboard", "numpy")


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def provenance() -> dict[str, Any]:
    """What produced this run: code version, packages, command line."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "git_commit": commit,
        "git_dirty": None if commit is None else bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": versions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as flat `a/b/c` keys with scalar values, which the HParams view can show."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            out[prefix] = node if isinstance(node, int | float | str | bool) else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def log_hparams(loggers: list[Any], cfg: DictConfig) -> None:
    """Record the whole config once; TensorBoard's HParams view gets real metrics (hp/*) at the end."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    params = flat_hparams(cfg)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Declares the metric tags without writing a value: no fake hp_metric=-1, no fake 0.
            writer = logger.experiment._get_file_writer()
            for summary in hparams(params, {"hp/val_acc": 0.0, "hp/test_acc": 0.0}):
                writer.add_summary(summary)
        else:
            logger.log_hyperparams(params)


def drop_val_monitors(cfg: DictConfig) -> None:
    """With `data.val_size=0` there is no val/* to monitor: keep the last epoch, never stop early."""
    with open_dict(cfg):
        for name, cb in (cfg.get("callbacks") or {}).items():
            if cb and str(cb.get("monitor") or "").startswith("val/"):
                if str(cb._target_).endswith("EarlyStopping"):
                    cfg.callbacks[name] = None
                else:
                    cb.monitor = None


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best (by val) checkpoint on the official test set; returns metrics.json's content."""
    global JOBS_STARTED
    start, JOBS_STARTED = time.perf_counter(), JOBS_STARTED + 1
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only

    # Lightning adds its own console handler; Hydra's handlers already print and file its records.
    logging.getLogger("lightning").handlers.clear()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs new torch
    # Our epoch-level values come from torchmetrics, which already synced them across ranks.
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
    from hydra.core.hydra_config import HydraConfig

    from mnist_cnn.validate import validate

    validate(cfg)  # types, ranges, targets, data headers, the checkpoint to resume: one line, before any work
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    out = Path(cfg.paths.output_dir)
    log.info("overrides: %s", " ".join(HydraConfig.get().overrides.task) or "(none)")  # in every rank's log
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.data.val_size == 0:
        drop_val_monitors(cfg)

    check_devices(str(cfg.trainer.accelerator), cfg.trainer.devices)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    if JOBS_STARTED > 1:
        model.started = start
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        write_json(out / "provenance.json", provenance())
        log_hparams(loggers, cfg)
    describe_processes(trainer, cfg)
    install_job_launcher()
    with one_job():
        metrics = fit_and_test(trainer, model, datamodule, cfg)
    metrics["wall_time_s"] = round(time.perf_counter() - start, 2)
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            hp = {"hp/test_acc": metrics["test/acc"]}
            if "val/acc_best" in metrics:  # data.val_size=0 has no val score: left empty, not a made-up NaN
                hp["hp/val_acc"] = metrics["val/acc_best"]
            logger.log_metrics(hp, step=trainer.global_step)
            logger.finalize("success")  # fit/test already closed it; this closes what log_metrics reopened
        write_json(out / "metrics.json", metrics)
        log.info(
            "done in %.1f s: test/acc %.4f  test/loss %.4f  (%d test images)  val/acc_best %s\n"
            "  best checkpoint: %s\n  output dir: %s",
            metrics["wall_time_s"], metrics["test/acc"], metrics["test/loss"], metrics["n_test"],
            f"{metrics['val/acc_best']:.4f}" if "val/acc_best" in metrics else "n/a (no validation)",
            metrics["best_ckpt"], out,
        )  # fmt: skip
    return metrics


def describe_processes(trainer: Any, cfg: DictConfig) -> None:
    """Say where training runs and what the batch size means there (per device; global = x world size)."""
    per_node = trainer.num_devices
    world = per_node * trainer.num_nodes
    threads = os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // per_node)
    accumulate = cfg.trainer.get("accumulate_grad_batches") or 1
    log.info(
        "training on %s: %d process(es) per node x %d node(s)%s; batch %d per device -> global batch %d",
        type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(), per_node, trainer.num_nodes,
        f", {threads} CPU thread(s) each" if type(trainer.accelerator).__name__ == "CPUAccelerator" else "",
        cfg.data.batch_size, cfg.data.batch_size * world * accumulate,
    )  # fmt: skip


def fit_and_test(trainer: Any, model: Any, datamodule: Any, cfg: DictConfig) -> dict[str, Any]:
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    val_best = trainer.callback_metrics.get("val/acc_best")
    speed = trainer.callback_metrics.get("perf/train_images_per_s")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not best:
        log.warning("no checkpoint was saved (fast_dev_run or no ModelCheckpoint): testing the final weights")
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None)

    cm = trainer.callback_metrics
    metrics: dict[str, Any] = {
        "test/acc": float(cm["test/acc"]),
        "test/loss": float(cm["test/loss"]),
        "n_test": int(cm["test/n_images"]),
        "best_ckpt": best or None,
        "output_dir": str(trainer.default_root_dir),
    }
    if val_best is not None and datamodule.has_val:
        metrics["val/acc_best"] = float(val_best)
    if speed is not None:  # last epoch's training throughput, all ranks together
        metrics["perf/train_images_per_s"] = round(float(speed), 1)
    if model.startup_s is not None:
        metrics["startup_s"] = round(model.startup_s, 2)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns `optimized_metric` for sweepers (e.g. Optuna)."""
    try:
        metrics = train(cfg)
    except Exception as err:
        exit_if_user_error(err, log)  # one `error:` line, exit 2 (an interruption: 128 + signal number)
        raise
    value = metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None else float(value)


def main() -> None:
    """`python train.py` and `mnist-train`: Hydra's entry, every user error one `error:` line (mnist_cnn.errors)."""
    with one_line_errors():
        hydra_main()
    if sys.getprofile() is None and sys.gettrace() is None:  # profilers/debuggers write their results at exit
        exit_without_teardown()


def exit_without_teardown() -> None:
    """Exit 0 without the interpreter's module teardown, which costs ~1.2 s of every run after torch + Lightning.

    Everything the run owns is written and closed by now; what a normal exit would still do is done here:
    atexit handlers run, non-daemon threads are joined, logs and stdio flushed.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
