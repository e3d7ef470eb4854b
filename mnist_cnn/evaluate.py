"""Evaluate a checkpoint on the official test set: `python -m mnist_cnn.evaluate ckpt_path=PATH` (`mnist-eval`).

Runs `trainer.test` with the training config's own `data` and `trainer` groups, so accuracy and loss are
the numbers the training run's test phase reported; adds per-class accuracy and a confusion matrix.
Writes `metrics.json` (training's keys plus those) and `confusion_matrix.png` to logs/eval/runs/<run>/.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, open_dict

from mnist_cnn import CONFIG_DIR, UserError
from mnist_cnn.errors import exit_if_user_error, one_line_errors
from mnist_cnn.train import write_json  # importing train also registers the resolvers conf/hydra uses

log = logging.getLogger("mnist_cnn.evaluate")
NUM_CLASSES = 10


def check_config(cfg: DictConfig) -> None:
    """Training's config checks (`mnist_cnn.validate`) for the groups evaluation shares, then the checkpoint.

    `validate` reads `ckpt_path` as a checkpoint to resume and compares its net with `model.net`, which an
    evaluation config does not have: the checkpoint is checked here instead.
    """
    from mnist_cnn.checkpoints import load_checkpoint
    from mnist_cnn.validate import validate

    if not cfg.get("ckpt_path"):
        raise UserError("ckpt_path=PATH is required: the checkpoint to evaluate (a .ckpt from a training run)")
    shared = cfg.copy()
    with open_dict(shared):
        shared.ckpt_path = None
    validate(shared)
    load_checkpoint(cfg.ckpt_path, key="ckpt_path")


class ValidateEvalConfig(HydraCallback):
    """Hydra callback (conf/evaluate.yaml): check before the run folder exists, so a typo leaves nothing."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_config(config)
        except UserError as err:
            exit_if_user_error(err)  # returns under HYDRA_FULL_ERROR=1: evaluate() raises it in full


def confusion_callback() -> Any:
    """A callback that counts (true, predicted) pairs from the very logits `test_step` computes.

    A forward hook on the module catches them, so nothing is run twice; torchmetrics sums the counts
    over processes under DDP.
    """
    from lightning.pytorch import Callback
    from torchmetrics.classification import MulticlassConfusionMatrix

    class ConfusionMatrix(Callback):
        def __init__(self) -> None:
            self.metric = MulticlassConfusionMatrix(NUM_CLASSES)
            self.counts = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
            self._logits: Any = None
            self._hook: Any = None

        def _keep(self, module: Any, args: Any, output: Any) -> None:
            self._logits = output.detach()

        def on_test_start(self, trainer: Any, pl_module: Any) -> None:
            self.metric = self.metric.to(pl_module.device)
            self.metric.reset()
            self._hook = pl_module.register_forward_hook(self._keep)

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
            self.metric.update(self._logits.argmax(dim=1), batch[1])

        def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.counts = self.metric.compute().cpu().numpy().astype(np.int64)

        def on_test_end(self, trainer: Any, pl_module: Any) -> None:
            self._hook.remove()

    return ConfusionMatrix()


def per_class_accuracy(counts: np.ndarray) -> dict[str, float | None]:
    """Recall of each true class (row of the confusion matrix); None for a class with no images."""
    totals = counts.sum(axis=1)
    return {str(d): (float(counts[d, d] / totals[d]) if totals[d] else None) for d in range(len(counts))}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test `cfg.ckpt_path` on the official test set; returns metrics.json's content."""
    start = time.perf_counter()
    check_config(cfg)
    from hydra.utils import instantiate

    from mnist_cnn.figures import confusion_matrix_image, save_png
    from mnist_cnn.inference import load_classifier

    logging.getLogger("lightning").handlers.clear()  # Hydra's handlers already print and file its records
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning vs new torch
    ckpt = Path(cfg.ckpt_path).expanduser().resolve()
    out = Path(cfg.paths.output_dir)
    model = load_classifier(ckpt, key="ckpt_path")
    datamodule = instantiate(cfg.data)
    confusion = confusion_callback()
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
        return float(evaluate(cfg)["test/acc"])
    except Exception as err:
        exit_if_user_error(err, log)  # one `error:` line, exit 2; anything else is a bug: full traceback
        raise


def main() -> None:
    """`python -m mnist_cnn.evaluate` and `mnist-eval`: every user error one `error:` line."""
    with one_line_errors():
        hydra_main()


if __name__ == "__main__":
    main()
