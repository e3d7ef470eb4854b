"""Training entry point: compose the Hydra config, fit, test the best checkpoint, write metrics.json.

`python train.py key=value ...` and the `mnist-train` console script both land in `main`. The config was
checked once already, before the run folder was made (mnist_cnn/config/validate.py, a Hydra callback).
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

from mnist_cnn import CONFIG_DIR
from mnist_cnn.config.launch import check_devices, install_job_launcher, one_job, requeued_checkpoint
from mnist_cnn.config.resolvers import register_resolvers
from mnist_cnn.config.sweep import in_sweep
from mnist_cnn.config.validate import check_job
from mnist_cnn.core.errors import exit_if_user_error, one_line_errors
from mnist_cnn.core.io import write_json
from mnist_cnn.core.memory import end_gc_pause, gc_paused, keep_freed_memory
from mnist_cnn.core.runinfo import describe_processes, exit_without_teardown, provenance

log = logging.getLogger("mnist_cnn.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best (by val) checkpoint on the official test set; returns metrics.json's content."""
    start = time.perf_counter()
    import lightning.pytorch as pl
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only

    from mnist_cnn.callbacks.dashboards import HParams, run_hparams
    from mnist_cnn.callbacks.timing import Throughput

    end_gc_pause()  # the libraries are in: from here on the collector runs, skipping their objects
    quiet_lightning()
    if cfg.get("keep_freed_memory"):
        keep_freed_memory()
    out, overrides = Path(cfg.paths.output_dir), list(HydraConfig.get().overrides.task)
    log.info("overrides: %s", " ".join(overrides) or "(none)")  # in every rank's log
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    if cfg.data.val_size == 0:
        drop_val_monitors(cfg)

    check_devices(str(cfg.trainer.accelerator), cfg.trainer.devices)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False, _convert_="all")
    timing = Throughput()
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += [timing, HParams(run_hparams(cfg, overrides))]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        write_json(out / "provenance.json", provenance())
    describe_processes(trainer, cfg.data.batch_size, cfg.trainer.get("accumulate_grad_batches") or 1)
    install_job_launcher()
    resume = cfg.get("ckpt_path") or requeued_checkpoint(out)  # a SLURM job submitit requeued continues
    with one_job():
        metrics = fit_and_test(trainer, model, datamodule, resume)
    if timing.startup_s is not None:
        metrics["startup_s"] = round(timing.startup_s, 2)
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


def fit_and_test(trainer: Any, model: Any, datamodule: Any, ckpt_path: str | Path | None) -> dict[str, Any]:
    """Fit (resuming from `ckpt_path` when set), test the best checkpoint; the metrics the run reports."""
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
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
    return metrics


class _Drop(logging.Filter):
    """Drops log records that start with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_lightning() -> None:
    """Lightning's lines that a user can do nothing about here, silenced where they come from."""
    # Lightning adds its own console handler; Hydra's handlers already print and file its records.
    logging.getLogger("lightning").handlers.clear()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs new torch
    # Our epoch-level values come from torchmetrics, which already synced them across ranks.
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
    # bf16 runs: the summary's size estimate assumes 32 bits; the parameter counts it prints are exact.
    warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")
    for name, prefixes in {
        "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),  # an advertisement on every run
        # Our checkpoint IO loads weights-only whatever this says (mnist_cnn/core/checkpoints.py).
        "lightning.pytorch.trainer.connectors.checkpoint_connector": ("`weights_only` was not set",),
    }.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(*prefixes))


def drop_val_monitors(cfg: DictConfig) -> None:
    """With `data.val_size=0` there is no val/* to monitor: keep the last epoch, never stop early; and no
    validation loop at all (Lightning would warn that an empty val loader was maybe not intended)."""
    with open_dict(cfg):
        cfg.trainer.limit_val_batches = 0
        for name, cb in (cfg.get("callbacks") or {}).items():
            if cb and str(cb.get("monitor") or "").startswith("val/"):
                if str(cb._target_).endswith("EarlyStopping"):
                    cfg.callbacks[name] = None
                else:
                    cb.monitor = None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns `optimized_metric` for sweepers (e.g. Optuna)."""
    try:
        check_job()  # a multirun job whose config ValidateConfig refused fails here, alone
        metrics = train(cfg)
    except Exception as err:
        # one `error:` line, exit 2 (an interruption: 128 + signal number); in a sweep only this job fails
        exit_if_user_error(err, log, sweep_job=in_sweep())
        raise
    value = metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None else float(value)


def main() -> None:
    """`python train.py` and `mnist-train`: Hydra's entry, every user error one `error:` line (core/errors.py)."""
    register_resolvers()
    with gc_paused(), one_line_errors():
        hydra_main()
    if sys.getprofile() is None and sys.gettrace() is None:  # profilers/debuggers write their results at exit
        exit_without_teardown()


if __name__ == "__main__":
    main()
