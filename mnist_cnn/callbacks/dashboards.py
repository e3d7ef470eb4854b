"""What a run shows in TensorBoard (and MLflow) besides scalars: the HParams table, and pictures of the test set.

Both are drawn by `mnist_cnn.callbacks.figures`. A Lightning callback, so train.py and the module stay as
they are: it listens to the module's forward passes during testing (a forward hook), so nothing is computed
twice. The confusion matrix is a torchmetrics metric, summed over all ranks under DDP (`mnist-eval` reads
its `counts`); the misclassified digits are gathered from every rank.
"""

from __future__ import annotations

from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix
from typing_extensions import override

from mnist_cnn.callbacks.figures import confusion_matrix_image, misclassified_grid


class TestDashboards(Callback):
    """After testing, log `test/confusion_matrix` and `test/misclassified` images to every image-capable logger.

    Args:
        num_classes: rows and columns of the confusion matrix.
        max_misclassified: digits in the grid (0: no grid).

    Note:
        `counts` holds the confusion matrix (rows: true digit) on every rank after the test epoch.
    """

    __test__ = False  # a Lightning callback about the test set, not a pytest class

    def __init__(self, num_classes: int = 10, max_misclassified: int = 64) -> None:
        self.num_classes, self.max_misclassified = num_classes, max_misclassified
        self._hook: Any = None
        self._last: tuple[Tensor, Tensor] | None = None
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.confusion = MulticlassConfusionMatrix(self.num_classes).to(pl_module.device)
        self.wrong: list[tuple[Tensor, Tensor, Tensor]] = []
        self.n_wrong = 0

        def remember(module: Any, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, Tensor) and args and isinstance(args[0], Tensor):
                self._last = (args[0].detach(), output.detach())

        self._hook = pl_module.register_forward_hook(remember)

    @override
    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        if self._last is None:
            return
        (x, logits), (_, y) = self._last, batch
        self._last = None
        preds = logits.argmax(1)
        self.confusion.update(preds, y)
        bad = (preds != y).nonzero().flatten()[: self.max_misclassified - self.n_wrong]
        if len(bad):
            self.wrong.append((x[bad], y[bad], preds[bad]))
            self.n_wrong += len(bad)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _gathered_wrong(self, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor, Tensor]:
        """Every rank's misclassified digits (padded to the same length for all_gather), rank 0's first."""
        k, dev = self.max_misclassified, pl_module.device
        x = torch.zeros(k, 1, 28, 28, dtype=torch.uint8, device=dev)
        y, p = torch.zeros(k, dtype=torch.long, device=dev), torch.zeros(k, dtype=torch.long, device=dev)
        if self.wrong:
            xs, ys, ps = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
            x[: len(ys)], y[: len(ys)], p[: len(ys)] = xs.reshape(-1, 1, 28, 28), ys, ps
        count = torch.tensor(self.n_wrong, device=dev)
        x_all, y_all, p_all, n_all = (cast(Tensor, pl_module.all_gather(t)) for t in (x, y, p, count))
        if n_all.dim() == 0:  # a single process: nothing was stacked
            return x[: self.n_wrong], y[: self.n_wrong], p[: self.n_wrong]
        keep = [(x_all[r][:n], y_all[r][:n], p_all[r][:n]) for r, n in enumerate(n_all.tolist())]
        xs, ys, ps = (torch.cat(parts)[:k] for parts in zip(*keep, strict=True))
        return xs, ys, ps

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # collectives under DDP: every rank calls them
        self.counts = counts = self.confusion.compute().cpu().numpy().astype(np.int64)
        wrong = self._gathered_wrong(pl_module) if self.max_misclassified else None
        if not trainer.is_global_zero or not trainer.loggers:
            return
        images = {"test/confusion_matrix": confusion_matrix_image(counts, title="test set")}
        if wrong is not None and len(wrong[1]):
            x, y, p = (t.cpu().numpy() for t in wrong)
            images["test/misclassified"] = misclassified_grid(x, y, p, total=int(counts.sum() - counts.trace()))
        log_images(trainer, images)


def log_images(trainer: pl.Trainer, images: dict[str, np.ndarray]) -> None:
    """TensorBoard gets image summaries at the current step; MLflow gets PNG artifacts; other loggers nothing."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for tag, image in images.items():
                logger.experiment.add_image(tag, image, global_step=trainer.global_step, dataformats="HWC")
            logger.experiment.flush()
        elif type(logger).__name__ == "MLFlowLogger":  # imports mlflow only when it is the logger in use
            client: Any = cast(Any, logger).experiment
            for tag, image in images.items():
                client.log_image(cast(Any, logger).run_id, image, artifact_file=f"{tag}.png")


# The knobs that tell runs apart, as `a/b/c` config paths; the full config stays in <run>/.hydra/config.yaml.
KNOBS = (
    "model/net/_target_", "model/optimizer/_target_", "model/optimizer/lr", "model/scheduler/_target_",
    "model/label_smoothing", "model/augment", "data/batch_size", "trainer/max_epochs", "trainer/max_steps",
    "trainer/precision", "seed",
)  # fmt: skip
_ABSENT = object()


def run_hparams(cfg: Any, overrides: list[str]) -> dict[str, Any]:
    """The HParams table's columns: the knobs above plus every key this job overrode, as scalars.

    A whole config (~80 keys, `callbacks/divergence_guard/_target_` ...) buries the metric columns off-screen;
    a group override (`experiment=fast`) is shown as the option chosen.
    """
    from omegaconf import OmegaConf

    def value(path: str) -> Any:
        node = OmegaConf.select(cfg, path.replace("/", "."), default=None)
        node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        if isinstance(node, str) and path.endswith("_target_"):
            return node.rsplit(".", 1)[-1]  # mnist_cnn.models.nets.SimpleCNN -> SimpleCNN
        return node if isinstance(node, int | float | str | bool) else "none" if node is None else str(node)

    present = [p for p in KNOBS if OmegaConf.select(cfg, p.replace("/", "."), default=_ABSENT) is not _ABSENT]
    # `model/optimizer/name`, not `model/optimizer`: MLflow stores params as files, so a key that is the
    # prefix of another (`model/optimizer/lr`) cannot be both a file and a folder.
    params = {path.replace("/_target_", "/name"): value(path) for path in present}
    for arg in overrides:
        key, _, chosen = arg.lstrip("+~").partition("=")
        if key.startswith("hydra") or key in ("data.data_dir", "ckpt_path"):  # paths name no hyperparameter
            continue
        node = OmegaConf.select(cfg, key, default=None)
        group_choice = "." not in key and (node is None or OmegaConf.is_config(node))  # experiment=fast
        params[key.replace(".", "/")] = chosen if group_choice else value(key.replace(".", "/"))
    return params


class HParams(Callback):
    """Write the HParams table (`run_hparams`) as training starts, from rank 0.

    Not earlier: a run that fails before training (a download, a refused setting) would leave an event
    file that TensorBoard lists as an empty run.
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            log_hparams(trainer.loggers, self.params)


def log_hparams(loggers: list[Any], params: dict[str, Any]) -> None:
    """Record the run's knobs once; TensorBoard's HParams view gets real metrics (hp/*) at the end."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Declares the metric tags without writing a value: no fake hp_metric=-1, no fake 0.
            writer = logger.experiment._get_file_writer()
            for summary in hparams(params, {"hp/val_acc": 0.0, "hp/test_acc": 0.0}):
                writer.add_summary(summary)
        else:
            logger.log_hyperparams(params)
