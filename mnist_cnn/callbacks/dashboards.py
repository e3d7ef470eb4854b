"""What a run shows in TensorBoard (and MLflow) besides scalars: pictures of the test set, and the HParams table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from typing_extensions import override

from mnist_cnn.callbacks.figures import confusion_matrix_image, misclassified_grid


class TestDashboards(pl.Callback):
    """After testing, log `test/confusion_matrix` and `test/misclassified` images to every image-capable logger.

    It listens to the module's forward passes during testing (a forward hook), so nothing is computed twice; the
    matrix is summed and the misclassified images gathered over all ranks under DDP.

    Args:
        max_misclassified: images in the grid (0: no grid).

    Note:
        `counts` holds the confusion matrix (rows: true class) on every rank after the test epoch (`mnist-eval`).
    """

    __test__ = False  # a Lightning callback about the test set, not a pytest class

    def __init__(self, max_misclassified: int = 64) -> None:
        self.max_misclassified = max_misclassified
        self.counts = np.zeros((0, 0), dtype=np.int64)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.confusion = MulticlassConfusionMatrix(pl_module.hparams["num_classes"]).to(pl_module.device)
        self.wrong: list[tuple[Tensor, Tensor, Tensor]] = []
        self.last: tuple[Tensor, Tensor] | None = None

        def remember(module: Any, args: tuple[Any, ...], output: Tensor) -> None:
            self.last = (args[0].detach(), output.detach())

        self.hook = pl_module.register_forward_hook(remember)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        assert self.last is not None
        (x, logits), y = self.last, batch[1]
        preds = logits.argmax(1)
        self.confusion.update(preds, y)
        bad = (preds != y).nonzero().flatten()[: self.max_misclassified - sum(len(w[1]) for w in self.wrong)]
        self.wrong.append((x[bad], y[bad], preds[bad]))

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.hook.remove()

    def _gathered_wrong(self, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor, Tensor]:
        """Every rank's misclassified images, rank 0's first (padded to one length for all_gather)."""
        x, y, p = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
        k, n = self.max_misclassified, len(y)
        padded = [torch.cat([t, t.new_zeros((k - n, *t.shape[1:]))]) for t in (x, y, p)]
        x_all, y_all, p_all, n_all = (cast(Tensor, pl_module.all_gather(t)) for t in (*padded, torch.tensor(n)))
        if n_all.dim() == 0:  # one process: nothing was stacked
            return x, y, p
        keep = [(x_all[r][:m], y_all[r][:m], p_all[r][:m]) for r, m in enumerate(n_all.tolist())]
        xs, ys, ps = (torch.cat(parts)[:k] for parts in zip(*keep, strict=True))
        return xs, ys, ps

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counts = self.confusion.compute().cpu().numpy().astype(np.int64)  # collectives: every rank calls them
        wrong = self._gathered_wrong(pl_module) if self.max_misclassified else None
        if not trainer.is_global_zero:
            return
        images = {"test/confusion_matrix": confusion_matrix_image(self.counts, title="test set")}
        if wrong is not None and len(wrong[1]):
            x, y, p = (t.cpu().numpy() for t in wrong)
            images["test/misclassified"] = misclassified_grid(
                x, y, p, total=int(self.counts.sum() - self.counts.trace())
            )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, image in images.items():
                    logger.experiment.add_image(tag, image, global_step=trainer.global_step, dataformats="HWC")
            elif type(logger).__name__ == "MLFlowLogger":  # imports mlflow only when it is the logger in use
                for tag, image in images.items():
                    cast(Any, logger).experiment.log_image(cast(Any, logger).run_id, image, artifact_file=f"{tag}.png")


def log_hparams(loggers: list[Logger], knobs: dict[str, Any], overrides: list[str], metrics: dict[str, float]) -> None:
    """The HParams table: this job's overrides, then the model's and the data's knobs, 25 columns at most, with
    the run's scores as its metrics (TensorBoard's HParams view sorts runs by them).

    Args:
        knobs: `{"model": model.hparams, "data": datamodule.hparams}` (their constructor arguments).
        overrides: the job's command-line overrides (`key=value`); group choices (`experiment=fast`) included.
    """

    def flat(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for key, value in node.items():
            yield from flat(value, f"{prefix}{key}/") if isinstance(value, dict) else [(f"{prefix}{key}", value)]

    skip = ("_partial_", "_dir", "root", "ckpt_path")  # paths and plumbing, not hyperparameters
    pairs = [o.lstrip("+~").split("=", 1) for o in overrides if "=" in o]
    params: dict[str, Any] = {
        k.replace(".", "/"): v for k, v in pairs if not k.startswith("hydra") and not k.endswith(skip)
    }
    for key, value in flat(knobs):
        if not key.endswith(skip) and key not in params and len(params) < 25:
            params[key] = value if isinstance(value, int | float | str | bool) else str(value)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, metrics=metrics)  # an HParams entry with these metrics
        else:
            logger.log_hyperparams(params)
            logger.log_metrics(metrics)
        logger.finalize("success")
