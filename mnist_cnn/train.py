"""Training: `python train.py [overrides]` (or `mnist-train`): fit, test the best checkpoint, write metrics.json."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from mnist_cnn import CONFIG_DIR, resolvers
from mnist_cnn.callbacks.dashboards import log_hparams
from mnist_cnn.cli import entry

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The schema of conf/train.yaml's own keys (Hydra checks their types); each group's keys are its class's."""

    data: Any
    model: Any
    trainer: Any
    paths: Any
    callbacks: Any = None
    logger: Any = None
    task_name: str = "train"
    seed: int | None = 42  # model init, data order, dropout and augmentation; null: unseeded
    ckpt_path: str | None = None  # resume from this checkpoint (e.g. <run>/checkpoints/last.ckpt)
    optimized_metric: str | None = "val/acc_best"  # what main returns to a sweeper (Optuna maximises it)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on the training split, test the best checkpoint (by val/acc) on the test set; returns metrics.json."""
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    model: pl.LightningModule = instantiate(cfg.model, num_classes=datamodule.num_classes)  # type: ignore[attr-defined]
    callbacks = [instantiate(c) for c in (cfg.callbacks or {}).values() if c]
    loggers = [instantiate(c) for c in (cfg.logger or {}).values() if c]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    out = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        write_json(out / "provenance.json", provenance())

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    best = getattr(trainer.checkpoint_callback, "best_model_path", None) or None  # None: test the final weights
    fitted = dict(trainer.callback_metrics)
    trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)

    metrics = {k: float(v) for k, v in {**fitted, **trainer.callback_metrics}.items()}
    if trainer.is_global_zero:
        scores = {f"hp/{k.replace('/', '_')}": metrics[k] for k in ("val/acc_best", "test/acc") if k in metrics}
        log_hparams(trainer.loggers, {"model": model.hparams, "data": datamodule.hparams},
                    list(HydraConfig.get().overrides.task), scores)  # fmt: skip
        write_json(out / "metrics.json", {**metrics, "best_ckpt": best, "output_dir": str(out)})
        log.info("test/acc %.4f on %d images; best checkpoint: %s; output: %s",
                 metrics["test/acc"], metrics["test/n_images"], best, out)  # fmt: skip
    return {**metrics, "best_ckpt": best}


def provenance() -> dict[str, Any]:
    """What produced this run: the code's git commit, the packages, the command line."""
    here = Path(__file__).parent
    git = lambda *args: subprocess.run(["git", *args], cwd=here, capture_output=True, text=True).stdout.strip()  # noqa: E731
    try:
        commit, dirty = git("rev-parse", "HEAD") or None, bool(git("status", "--porcelain", "--untracked-files=no"))
    except OSError:  # no git
        commit, dirty = None, False
    packages = ("torch", "torchvision", "lightning", "hydra-core", "torchmetrics", "numpy")
    return {
        "git_commit": commit, "git_dirty": dirty if commit else None, "command": [sys.executable, *sys.argv],
        "python": platform.python_version(), "host": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "packages": {p: metadata.version(p) for p in packages},
    }  # fmt: skip


def write_json(path: Path, obj: object) -> None:
    """`obj` as indented JSON, written whole or not at all (a reader never sees half a file)."""
    (tmp := path.with_name(f".{path.name}.tmp")).write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


resolvers.register()
ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@entry
def main(cfg: DictConfig) -> float | None:
    """`python train.py` and `mnist-train`; returns `optimized_metric` for sweepers."""
    value = train(cfg).get(cfg.optimized_metric or "")
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
