"""Figures as plain RGB arrays (H, W, 3) uint8, drawn with Pillow: saved as PNG by `mnist-eval` and
loggable as they are to TensorBoard (`add_image(..., dataformats="HWC")`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnist_cnn.core.io import atomic_write

CELL = 46


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font bundled with Pillow (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def misclassified_grid(
    images: np.ndarray, labels: np.ndarray, preds: np.ndarray, total: int | None = None, cols: int = 8, zoom: int = 2
) -> np.ndarray:
    """Digits (N, 1, 28, 28) uint8, white on black, tiled in a grid and captioned `t:7 p:1` (true, predicted)."""
    size, caption, header = 28 * zoom, 14, 18
    rows = max(1, -(-len(images) // cols))
    img = Image.new("RGB", (max(cols * (size + 4), 300), header + rows * (size + caption + 4)), "white")
    draw, font = ImageDraw.Draw(img), _font(11)
    shown = f"first {len(images)} of {total}" if total is not None else str(len(images))
    draw.text((2, 2), f"misclassified test digits: {shown} (t: true, p: predicted)", fill="black", font=font)
    for i in range(len(images)):
        x, y = (i % cols) * (size + 4) + 2, header + (i // cols) * (size + caption + 4) + 2
        digit = Image.fromarray(255 - images[i].reshape(28, 28)).resize((size, size), Image.Resampling.NEAREST)
        img.paste(digit, (x, y + caption))  # dark ink on white, like the page around it
        draw.text((x + size / 2, y), f"t:{int(labels[i])} p:{int(preds[i])}", fill="red", font=font, anchor="mt")
    return np.asarray(img)


def confusion_matrix_image(counts: np.ndarray, title: str = "") -> np.ndarray:
    """Confusion matrix (rows: true class, columns: predicted) with counts in the cells.

    A cell's shade is its share of the true class, blue on the diagonal and red off it, so a few
    systematic confusions stand out even at 99% accuracy.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.shape[0]
    if counts.shape != (n, n):
        raise ValueError(f"a confusion matrix must be square, got shape {counts.shape}")
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    left, top = 70, 80 if title else 56
    img = Image.new("RGB", (left + n * CELL + 20, top + n * CELL + 50), "white")
    draw = ImageDraw.Draw(img)
    small, label = _font(13), _font(15)
    if title:
        draw.text((left + n * CELL / 2, 14), title, fill="black", font=label, anchor="mt")
    draw.text((left + n * CELL / 2, top - 34), "predicted", fill="black", font=label, anchor="mm")
    draw.text((16, top + n * CELL / 2), "true", fill="black", font=label, anchor="mm")
    for i in range(n):
        draw.text((left + i * CELL + CELL / 2, top - 12), str(i), fill="black", font=label, anchor="mm")
        draw.text((left - 14, top + i * CELL + CELL / 2), str(i), fill="black", font=label, anchor="mm")
        for j in range(n):
            # Off-diagonal shares are small: stretch them (x5) so a 2% confusion is visible.
            s = float(share[i, j]) if i == j else min(1.0, 5 * float(share[i, j]))
            fill = (
                (int(255 - 200 * s), int(255 - 130 * s), 255)
                if i == j
                else (255, int(255 - 200 * s), int(255 - 200 * s))
            )
            box = (left + j * CELL, top + i * CELL, left + (j + 1) * CELL - 1, top + (i + 1) * CELL - 1)
            draw.rectangle(box, fill=fill, outline=(200, 200, 200))
            if counts[i, j]:
                ink = "white" if s > 0.6 else "black"
                draw.text((box[0] + CELL / 2, box[1] + CELL / 2), str(counts[i, j]), fill=ink, font=small, anchor="mm")
    total = counts.sum()
    acc = np.trace(counts) / total if total else float("nan")
    draw.text((left, top + n * CELL + 16), f"{total} images, accuracy {acc:.4f}", fill="black", font=label)
    return np.asarray(img)


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an (H, W, 3) uint8 array as PNG, atomically."""
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))
