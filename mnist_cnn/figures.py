"""Figures as plain RGB arrays (H, W, 3) uint8, drawn with Pillow: saved as PNG by `mnist-eval` and
loggable as they are to TensorBoard (`add_image(..., dataformats="HWC")`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 46


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font bundled with Pillow (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


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
    """Write an (H, W, 3) uint8 array as PNG via a temporary name, so no reader sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)
