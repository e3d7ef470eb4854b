"""Small image operations on float arrays (numpy + Pillow only), for `mnist_cnn.infer.preprocess`.

No scipy or OpenCV: the ONNX prediction path must stay a small install that never imports torch.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image

Array = np.ndarray


def resize(a: Array, h: int, w: int) -> Array:
    """Area-average when shrinking (the anti-aliasing MNIST's size normalisation had), bilinear when growing."""
    shrink = h * w < a.shape[0] * a.shape[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((w, h), method), dtype=np.float32)


def box_blur(a: Array, r: int) -> Array:
    """Two passes of a (2r+1)^2 box filter (about a Gaussian): averages pixel noise away before thresholding."""
    for _ in range(2):
        for axis in (0, 1):
            pad = np.pad(a, [(r + 1, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
            c = np.cumsum(pad, axis=axis, dtype=np.float64)
            hi, lo = (
                np.take(c, range(2 * r + 1, c.shape[axis]), axis),
                np.take(c, range(c.shape[axis] - 2 * r - 1), axis),
            )
            a = ((hi - lo) / (2 * r + 1)).astype(np.float32)
    return a


def lower_spread(v: Array, centre: float) -> float:
    """Noise level (a robust standard deviation) from the values below `centre`, which ink never reaches."""
    below = centre - v[v < centre]
    return 1.4826 * float(np.median(below)) if below.size else 0.0


def otsu(v: Array) -> float:
    """The threshold that best splits `v` into two classes (ink and paper) by between-class variance."""
    hist, edges = np.histogram(v, bins=256)
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0, m0 = np.cumsum(p), np.cumsum(p * centres)
    between = (m0[-1] * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(edges[int(np.argmax(between[:-1])) + 1])


def components(mask: Array) -> tuple[Array, int]:
    """8-connected component labels (0 = background) of a small boolean mask."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w, n = mask.shape[0], mask.shape[1], 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0], todo = n, deque([(y0, x0)])
        while todo:
            y, x = todo.popleft()
            for yy in range(max(0, y - 1), min(h, y + 2)):
                for xx in range(max(0, x - 1), min(w, x + 2)):
                    if mask[yy, xx] and not labels[yy, xx]:
                        labels[yy, xx] = n
                        todo.append((yy, xx))
    return labels, n


def stroke_width(s: Array) -> float:
    """Mean stroke width in pixels: 2 * area / perimeter of the ink (> 0.5), exact for long thin strokes."""
    b = np.pad(s > 0.5, 1)
    perimeter = np.count_nonzero(b[1:] != b[:-1]) + np.count_nonzero(b[:, 1:] != b[:, :-1])
    return 2 * int(np.count_nonzero(b)) / max(1, int(perimeter))


def morph(s: Array, radius: int, grow: bool) -> Array:
    """Gray dilation (grow) or erosion with a disc: changes stroke width by 2*radius px."""
    pad = np.pad(s, radius)
    h, w = s.shape
    out = s.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius + radius:
                shifted = pad[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
                out = np.maximum(out, shifted) if grow else np.minimum(out, shifted)
    return out
