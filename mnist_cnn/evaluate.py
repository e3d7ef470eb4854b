"""Evaluate a checkpoint on the test set: `mnist-eval ckpt_path=PATH` (python -m mnist_cnn.evaluate).

`trainer.test` with training's own `data` and `trainer` groups, so accuracy and loss are the numbers the training
run's test phase reported; adds per-class accuracy and the confusion matrix, in `metrics.json` and
`confusion_matrix.png` under logs/eval/runs/<run>/.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig

from mnist_cnn import CONFIG_DIR, resolvers
from mnist_cnn.callbacks.dashboards import TestDashboards
from mnist_cnn.callbacks.figures import confusion_matrix_image, save_png
from mnist_cnn.cli import entry
from mnist_cnn.infer.classifiers import load_classifier
from mnist_cnn.train import write_json

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """The schema of conf/evaluate.yaml's own keys."""

    data: Any
    trainer: Any
    paths: Any
    ckpt_path: str = MISSING
    task_name: str = "eval"
    seed: int | None = 42
    optimized_metric: str | None = "test/acc"


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test `cfg.ckpt_path` on the test set; returns what metrics.json holds."""
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    model = load_classifier(ckpt, key="ckpt_path")
    datamodule = instantiate(cfg.data)
    dashboards = TestDashboards(max_misclassified=0)
    trainer = instantiate(cfg.trainer, callbacks=[dashboards], logger=False, enable_checkpointing=False)
    trainer.test(model, datamodule=datamodule, verbose=False)

    counts, out = dashboards.counts, Path(cfg.paths.output_dir)
    totals = counts.sum(axis=1)
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics |= {
        "ckpt_path": str(ckpt),
        "test/acc_per_class": {str(c): float(counts[c, c] / n) if n else None for c, n in enumerate(totals)},
        "confusion_matrix": counts.tolist(),  # rows: true class, columns: predicted
    }
    if trainer.is_global_zero:
        title = f"{ckpt.parent.parent.name}/{ckpt.name}" if ckpt.parent.name == "checkpoints" else ckpt.name
        save_png(confusion_matrix_image(counts, title=title), out / "confusion_matrix.png")
        write_json(out / "metrics.json", metrics)
        per_class = "  ".join(f"{c}: {a:.4f}" for c, a in metrics["test/acc_per_class"].items() if a is not None)
        log.info("test/acc %.4f on %d images (%s)\n  per class: %s\n  output: %s", metrics["test/acc"],
                 int(np.sum(counts)), ckpt, per_class, out)  # fmt: skip
    return metrics


resolvers.register()
ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@entry
def main(cfg: DictConfig) -> float:
    """`mnist-eval`; returns test/acc (for sweeps over checkpoints: `-m ckpt_path=a.ckpt,b.ckpt`)."""
    return float(evaluate(cfg)["test/acc"])


if __name__ == "__main__":
    main()
