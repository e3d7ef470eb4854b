"""Training entry point: compose the Hydra config, fit, test the best checkpoint, write metrics.json.

`python train.py key=value ...` and the `mnist-train` console script both land in `main`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from mnist_cnn import CONFIG_DIR, UserError

log = logging.getLogger("mnist_cnn.train")
PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "torchmetrics", "tensorboard", "numpy")


def write_json(path: Path, obj: Any) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


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
    start = time.perf_counter()
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only

    # Lightning adds its own console handler; Hydra's handlers already print and file its records.
    logging.getLogger("lightning").handlers.clear()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs new torch
    out = Path(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("ckpt_path") and not Path(cfg.ckpt_path).is_file():
        raise UserError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
    if cfg.data.val_size == 0:
        drop_val_monitors(cfg)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        write_json(out / "provenance.json", provenance())
        log_hparams(loggers, cfg)
    log.info("accelerator: %s, devices: %s", type(trainer.accelerator).__name__, trainer.num_devices)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    val_best = trainer.callback_metrics.get("val/acc_best")
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
        "output_dir": str(out),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    if val_best is not None and datamodule.has_val:
        metrics["val/acc_best"] = float(val_best)
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            hp = {"hp/test_acc": metrics["test/acc"], "hp/val_acc": metrics.get("val/acc_best", float("nan"))}
            logger.log_metrics(hp, step=trainer.global_step)
            logger.save()
        write_json(out / "metrics.json", metrics)
        log.info(
            "done in %.1f s: test/acc %.4f  test/loss %.4f  (%d test images)  val/acc_best %s\n"
            "  best checkpoint: %s\n  output dir: %s",
            metrics["wall_time_s"], metrics["test/acc"], metrics["test/loss"], metrics["n_test"],
            f"{metrics['val/acc_best']:.4f}" if "val/acc_best" in metrics else "n/a (no validation)",
            metrics["best_ckpt"], out,
        )  # fmt: skip
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns `optimized_metric` for sweepers (e.g. Optuna)."""
    try:
        metrics = train(cfg)
    except UserError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    value = metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None else float(value)
