"""Figures as plain RGB arrays (H, W, 3) uint8, drawn with Pillow: saved as PNG by `mnist-eval` and
loggable as they are to TensorBoard (`add_image(..., dataformats="HWC")`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 48  # with 19 px counts: TensorBoard's ~330 px card shows them as ~12 px text


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font bundled with Pillow (needs FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _arrow(draw: ImageDraw.ImageDraw, x: float, y: float, width: float, fill: str) -> None:
    """A right arrow: Pillow's bundled font has no `→` glyph."""
    draw.line((x, y, x + width, y), fill=fill, width=2)
    draw.polygon([(x + width, y), (x + width - 5, y - 4), (x + width - 5, y + 4)], fill=fill)


def misclassified_grid(
    images: np.ndarray, labels: np.ndarray, preds: np.ndarray, total: int | None = None, cols: int = 6, zoom: int = 2
) -> np.ndarray:
    """Images (N, 1, H, W) uint8, white on black, tiled and captioned `7→1` (true→predicted); RGB uint8.

    Sized for TensorBoard's image cards (~330 px wide): six 56 px digits a row and 17 px captions still read
    as ~13 px text at 100% zoom.
    """
    size, gap, caption, header = images.shape[-1] * zoom, 6, 22, 48
    rows = max(1, -(-len(images) // cols))
    img = Image.new("RGB", (cols * (size + gap) + gap, header + rows * (size + caption + gap)), "white")
    draw, font = ImageDraw.Draw(img), _font(17)
    shown = f"first {len(images)} of {total}" if total is not None else str(len(images))
    draw.text((gap, 4), f"misclassified: {shown}", fill="black", font=font)
    draw.text((gap, 25), "true", fill="black", font=font)
    _arrow(draw, gap + 36, 35, 16, "black")
    draw.text((gap + 58, 25), "predicted", fill="black", font=font)
    for i in range(len(images)):
        x, y = gap + (i % cols) * (size + gap), header + (i // cols) * (size + caption + gap)
        digit = Image.fromarray(255 - images[i, 0]).resize((size, size), Image.Resampling.NEAREST)
        img.paste(digit, (x, y + caption))  # dark ink on white, like the page around it
        mid = x + size / 2
        draw.text((mid - 10, y), str(int(labels[i])), fill="black", font=font, anchor="rt")
        _arrow(draw, mid - 8, y + 9, 16, "red")
        draw.text((mid + 10, y), str(int(preds[i])), fill="red", font=font, anchor="lt")
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
    left, top = 80, 94 if title else 64
    img = Image.new("RGB", (left + n * CELL + 8, top + n * CELL + 44), "white")
    draw = ImageDraw.Draw(img)
    small, label = _font(19), _font(22)
    if title:
        draw.text((left + n * CELL / 2, 6), title, fill="black", font=label, anchor="mt")
    draw.text((left + n * CELL / 2, top - 42), "predicted", fill="black", font=label, anchor="mm")
    draw.text((4, top + n * CELL / 2), "true", fill="black", font=label, anchor="lm")
    for i in range(n):
        draw.text((left + i * CELL + CELL / 2, top - 14), str(i), fill="black", font=label, anchor="mm")
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
    draw.text((left, top + n * CELL + 10), f"{total} images, accuracy {acc:.4f}", fill="black", font=label)
    return np.asarray(img)


def save_png(image: np.ndarray, path: Path) -> None:
    """Write an (H, W, 3) RGB or (H, W) gray uint8 array as PNG, atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
