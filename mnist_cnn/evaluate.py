"""Evaluate a checkpoint on the official test set: `python -m mnist_cnn.evaluate ckpt_path=PATH` (`mnist-eval`).

Runs `trainer.test` with the training config's own `data` and `trainer` groups, so accuracy and loss are
the numbers the training run's test phase reported; adds per-class accuracy and a confusion matrix (the
same callback that draws training's TensorBoard pictures). Writes `metrics.json` (training's keys plus
those) and `confusion_matrix.png` to logs/eval/runs/<run>/.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, open_dict

from mnist_cnn import CONFIG_DIR
from mnist_cnn.config.resolvers import register_resolvers
from mnist_cnn.config.sweep import in_sweep
from mnist_cnn.config.validate import ValidateConfig, check_job, validate
from mnist_cnn.core.errors import UserError, exit_if_user_error, one_line_errors
from mnist_cnn.core.io import write_json
from mnist_cnn.core.memory import end_gc_pause, gc_paused
from mnist_cnn.train import quiet_lightning

log = logging.getLogger("mnist_cnn.evaluate")


class ValidateEvalConfig(ValidateConfig):
    """Training's checks for the groups evaluation shares, then `ckpt_path` as a checkpoint to evaluate.

    `validate` reads `ckpt_path` as a checkpoint to resume and compares its net with `model.net`, which an
    evaluation config does not have: the checkpoint is checked here instead.
    """

    def check(self, config: DictConfig) -> None:
        from mnist_cnn.core.checkpoints import load_checkpoint

        if not config.get("ckpt_path"):
            raise UserError("ckpt_path=PATH is required: the checkpoint to evaluate (a .ckpt from a training run)")
        shared = config.copy()
        with open_dict(shared):
            shared.ckpt_path = None
        validate(shared)
        load_checkpoint(config.ckpt_path, key="ckpt_path")


def per_class_accuracy(counts: np.ndarray) -> dict[str, float | None]:
    """Recall of each true class (row of the confusion matrix); None for a class with no images."""
    totals = counts.sum(axis=1)
    return {str(d): (float(counts[d, d] / totals[d]) if totals[d] else None) for d in range(len(counts))}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test `cfg.ckpt_path` (checked by ValidateEvalConfig) on the official test set; returns metrics.json."""
    start = time.perf_counter()
    from hydra.utils import instantiate

    from mnist_cnn.callbacks.dashboards import TestDashboards
    from mnist_cnn.callbacks.figures import confusion_matrix_image, save_png
    from mnist_cnn.infer.classifiers import load_classifier

    end_gc_pause()  # the libraries are in (core/memory.py)
    quiet_lightning()
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    out = Path(cfg.paths.output_dir)
    model = load_classifier(ckpt, key="ckpt_path")
    datamodule = instantiate(cfg.data)
    confusion = TestDashboards(max_misclassified=0)
    trainer = instantiate(cfg.trainer, callbacks=[confusion], logger=False, enable_checkpointing=False)
    trainer.test(model, datamodule=datamodule, verbose=False)

    cm, counts = trainer.callback_metrics, confusion.counts
    metrics: dict[str, Any] = {
        "test/acc": float(cm["test/acc"]),
        "test/loss": float(cm["test/loss"]),
        "n_test": int(cm["test/n_images"]),
        "best_ckpt": str(ckpt),  # the checkpoint evaluated, under training's key
        "output_dir": str(out),
        "wall_time_s": round(time.perf_counter() - start, 2),
        "ckpt_path": str(ckpt),
        "test/acc_per_class": per_class_accuracy(counts),
        "confusion_matrix": counts.tolist(),  # rows: true digit, columns: predicted digit
    }
    if int(counts.sum()) != metrics["n_test"] or abs(np.trace(counts) / counts.sum() - metrics["test/acc"]) > 1e-6:
        raise RuntimeError(f"confusion matrix ({int(counts.sum())} images) disagrees with test/acc, test/n_images")
    if trainer.is_global_zero:
        title = f"{ckpt.parent.parent.name}/{ckpt.name}" if ckpt.parent.name == "checkpoints" else ckpt.name
        save_png(confusion_matrix_image(counts, title=title), out / "confusion_matrix.png")
        write_json(out / "metrics.json", metrics)
        per_class = "  ".join(f"{d}: {a:.4f}" for d, a in metrics["test/acc_per_class"].items() if a is not None)
        log.info(
            "test/acc %.4f  test/loss %.4f  (%d test images)  checkpoint: %s\n  per-class accuracy: %s\n"
            "  confusion matrix: %s\n  output dir: %s",
            metrics["test/acc"], metrics["test/loss"], metrics["n_test"], ckpt, per_class,
            out / "confusion_matrix.png", out,
        )  # fmt: skip
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra entry; returns test/acc (for sweeps over checkpoints: ckpt_path=a.ckpt,b.ckpt -m)."""
    try:
        check_job()  # a multirun job whose config ValidateEvalConfig refused fails here, alone
        return float(evaluate(cfg)["test/acc"])
    except Exception as err:
        # one `error:` line, exit 2 (in a sweep only this job fails); anything else is a bug: full traceback
        exit_if_user_error(err, log, sweep_job=in_sweep())
        raise


def main() -> None:
    """`python -m mnist_cnn.evaluate` and `mnist-eval`: every user error one `error:` line.

    The checkpoint may be given on its own (`mnist-eval run/checkpoints/last.ckpt`), as `mnist-predict` and
    `mnist-export` take it: the one argument that is neither a flag nor an override becomes `ckpt_path=`.
    """
    bare = [i for i, arg in enumerate(sys.argv) if i and not arg.startswith(("-", "~", "+")) and "=" not in arg]
    if len(bare) == 1:
        sys.argv[bare[0]] = f"ckpt_path={sys.argv[bare[0]]}"
    register_resolvers()
    with gc_paused(), one_line_errors():
        hydra_main()


if __name__ == "__main__":
    main()
