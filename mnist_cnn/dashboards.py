"""Pictures of the test set for TensorBoard (and MLflow): a confusion matrix and a grid of misclassified digits.

The confusion matrix is drawn by `mnist_cnn.figures` (the same figure `mnist-eval` saves).

A Lightning callback, so train.py and the module stay as they are: it listens to the module's forward
passes during testing (a forward hook), so nothing is computed twice. The confusion matrix is a torchmetrics
metric, summed over all ranks under DDP; the misclassified digits are gathered from every rank.
"""

from __future__ import annotations

from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_cnn.data import MEAN, STD
from mnist_cnn.figures import confusion_matrix_image


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font where Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def misclassified_grid(
    images: Tensor, labels: Tensor, preds: Tensor, total: int | None = None, cols: int = 8, zoom: int = 2
) -> np.ndarray:
    """Digits (N, 1, 28, 28, normalised) tiled in a grid, each captioned `t:7 p:1` (true, predicted); RGB uint8."""
    size, caption, header = 28 * zoom, 14, 18
    rows = max(1, -(-len(images) // cols))
    img = Image.new("RGB", (max(cols * (size + 4), 300), header + rows * (size + caption + 4)), "white")
    draw, font = ImageDraw.Draw(img), _font(11)
    shown = f"first {len(images)} of {total}" if total is not None else str(len(images))
    draw.text((2, 2), f"misclassified test digits: {shown} (t: true, p: predicted)", fill="black", font=font)
    pixels = ((images.float().cpu() * STD + MEAN).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i in range(len(images)):
        x, y = (i % cols) * (size + 4) + 2, header + (i // cols) * (size + caption + 4) + 2
        digit = Image.fromarray(255 - pixels[i, 0]).resize((size, size), Image.Resampling.NEAREST)  # dark ink
        img.paste(digit, (x, y + caption))
        draw.text((x + size / 2, y), f"t:{int(labels[i])} p:{int(preds[i])}", fill="red", font=font, anchor="mt")
    return np.asarray(img)


class TestDashboards(Callback):
    """After testing, log `test/confusion_matrix` and `test/misclassified` images to every image-capable logger."""

    __test__ = False  # a Lightning callback about the test set, not a pytest class

    def __init__(self, num_classes: int = 10, max_misclassified: int = 64) -> None:
        self.num_classes, self.max_misclassified = num_classes, max_misclassified
        self._hook: Any = None
        self._last: tuple[Tensor, Tensor] | None = None

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.confusion = MulticlassConfusionMatrix(self.num_classes).to(pl_module.device)
        self.wrong: list[tuple[Tensor, Tensor, Tensor]] = []
        self.n_wrong = 0

        def remember(module: Any, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, Tensor) and args and isinstance(args[0], Tensor):
                self._last = (args[0].detach(), output.detach())

        self._hook = pl_module.register_forward_hook(remember)

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

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _gathered_wrong(self, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor, Tensor]:
        """Every rank's misclassified digits (padded to the same length for all_gather), rank 0's first."""
        k, dev = self.max_misclassified, pl_module.device
        x = torch.zeros(k, 1, 28, 28, device=dev)
        y, p = torch.zeros(k, dtype=torch.long, device=dev), torch.zeros(k, dtype=torch.long, device=dev)
        if self.wrong:
            xs, ys, ps = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
            x[: len(ys)], y[: len(ys)], p[: len(ys)] = xs.reshape(-1, 1, 28, 28).float(), ys, ps
        count = torch.tensor(self.n_wrong, device=dev)
        x_all, y_all, p_all, n_all = (cast(Tensor, pl_module.all_gather(t)) for t in (x, y, p, count))
        if n_all.dim() == 0:  # a single process: nothing was stacked
            return x[: self.n_wrong], y[: self.n_wrong], p[: self.n_wrong]
        keep = [(x_all[r][:n], y_all[r][:n], p_all[r][:n]) for r, n in enumerate(n_all.tolist())]
        xs, ys, ps = (torch.cat(parts)[:k] for parts in zip(*keep, strict=True))
        return xs, ys, ps

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        matrix = self.confusion.compute()  # collective under DDP: every rank calls it
        x, y, p = self._gathered_wrong(pl_module)
        if not trainer.is_global_zero:
            return
        counts = matrix.cpu().numpy()
        images = {"test/confusion_matrix": confusion_matrix_image(counts, title="test set")}
        if len(y):
            errors = int(counts.sum() - counts.trace())
            images["test/misclassified"] = misclassified_grid(x, y, p, total=errors)
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
