"""MNIST's own preprocessing, applied to a digit image a person made (photo, scan, paint program).

The net only knows MNIST: white ink on black, the digit scaled so its longer side is 20 px (anti-aliased),
pasted into 28x28 with its centre of mass at the centre, strokes about 2 px wide. Anything else (dark ink
on paper, a digit in a corner, a thin pen line on a 2000 px photo) is misread unless it is turned into
that first. numpy + Pillow only: the ONNX prediction path must not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnist_cnn.cli import UserError
from mnist_cnn.infer import first_line
from mnist_cnn.infer.imageops import box_blur, components, lower_spread, morph, otsu, resize, stroke_width

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
WORK_SIDE = 768  # longer side of the working copy: enough for any digit, bounded cost for 12 MP photos
BOX, SIZE = 20, 28  # MNIST: the longer side is scaled to 20 px, pasted into 28x28
CANVAS = 4 * BOX  # resolution at which stroke width is adjusted
# MNIST stroke width (2*area/perimeter of ink > 0.5, in 20 px box units): median 2.0, 1-99% 1.06-3.6.
# Thinner than MNIST's thinnest is thickened to its median; marker-thick strokes (filled loops) read better
# thinned to 2.2 from 2.6 on (measured on MNIST digits redrawn large and on non-MNIST handwriting).
THIN, THICK, TARGET_THIN, TARGET_THICK = 1.0, 2.6, 2.0, 2.2
Array = np.ndarray


def load_gray(path: str | Path | BinaryIO) -> Array:
    """Any image file (path, or binary file object: `mnist-demo` gets bytes) -> float32 gray in [0, 1];
    transparency is flattened onto paper that contrasts the ink."""
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened)  # phone photos are stored sideways with an EXIF rotation
            img.load()
    except FileNotFoundError:
        raise UserError("no such file") from None
    except UnidentifiedImageError:
        raise UserError("not an image (or a format Pillow cannot read)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read the image (truncated or corrupt?): {first_line(err, typed=False)}") from None
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit and float images
        a = np.asarray(img, dtype=np.float32)
        return np.clip(a / (65535.0 if a.max() > 255 else 255.0 if a.max() > 1 else 1.0), 0, 1)
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255
    gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL "L"
    alpha = rgba[..., 3]
    if alpha.min() < 1:
        opaque = alpha > 0.5
        paper = 1.0 if not opaque.any() or gray[opaque].mean() < 0.5 else 0.0
        gray = gray * alpha + paper * (1 - alpha)
    return gray.astype(np.float32)


def _background(g: Array) -> Array:
    """Smooth paper level: a quadratic surface fitted robustly (ink pixels rejected as outliers).

    Removes lighting gradients and vignetting that a single global threshold would mistake for ink.
    """
    h, w = g.shape
    sh, sw = max(1, round(h * 48 / max(h, w))), max(1, round(w * 48 / max(h, w)))
    small = resize(g, sh, sw).ravel()

    def design(ny: int, nx: int) -> Array:
        yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
        y, x = yy.ravel(), xx.ravel()
        return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)

    basis = design(sh, sw)
    ring = np.ones((sh, sw), dtype=bool)
    ring[3:-3, 3:-3] = False  # start from the image's rim: mostly paper, even when the digit is huge,
    rim = small[ring.ravel()]  # and from the half of it nearest its median: not a table or shadow at one side
    keep = ring.ravel() & (np.abs(small - np.median(rim)) <= np.median(np.abs(rim - np.median(rim))))
    for _ in range(5):  # refit on the pixels near the surface; ink, on either side of it, drops out
        if keep.sum() < 2 * basis.shape[1]:
            return np.full_like(g, float(np.median(small)))
        coef = np.linalg.lstsq(basis[keep], small[keep], rcond=None)[0]
        resid = small - basis @ coef
        centre = float(np.median(resid))
        keep = np.abs(resid - centre) <= 2.5 * 1.4826 * float(np.median(np.abs(resid - centre))) + 1e-3
    return (design(h, w) @ coef).reshape(h, w).astype(np.float32)


def ink_up(gray: Array) -> Array:
    """Gray image -> ink above a flat paper level of 0: dark ink on light paper or light ink on dark.

    The ink is whichever side of the paper level has the heavier tail of outliers; a global median or
    percentile test gets this wrong when a thin digit covers under 1% of a gradient-lit page.
    """
    r = gray - _background(gray)
    r -= np.median(r)
    spread = 4 * 1.4826 * float(np.median(np.abs(r)))
    return r if np.clip(r - spread, 0, None).sum() >= np.clip(-r - spread, 0, None).sum() else -r


def _digit_region(ink: Array) -> Array:
    """Where the digit is: keep the big connected pieces of ink, drop specks, paper edges and stray marks."""
    h, w = ink.shape
    f = max(1, -(-max(h, w) // 160))  # pool to <= 160 px so labelling stays cheap
    ph, pw = -(-h // f), -(-w // f)
    padded = np.zeros((ph * f, pw * f), dtype=bool)
    padded[:h, :w] = ink
    pooled = np.asarray(padded.reshape(ph, f, pw, f).any(axis=(1, 3)))
    labels, n = components(pooled)
    if n == 0:
        raise UserError("no digit found: the image looks blank")
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    # Along the rim for a tenth of it: a paper edge or a shadow, not a digit (which touches it at most briefly).
    edge = np.bincount(rim, minlength=n + 1)[1:] >= 0.1 * rim.size
    candidates = [i for i in range(n) if not edge[i]] or list(range(n))
    top = max(areas[i] for i in candidates)
    keep = [i for i in candidates if areas[i] >= 0.05 * top]  # specks and dust are far smaller
    main = max(keep, key=lambda i: areas[i])
    ys, xs = np.nonzero(labels == main + 1)
    reach = 0.6 * max(np.ptp(ys), np.ptp(xs)) + 2  # pieces of a digit are near each other; a smudge far off is not
    region = np.zeros_like(pooled)
    for i in keep:
        yy, xx = np.nonzero(labels == i + 1)
        gap = max(0, max(yy.min() - ys.max(), ys.min() - yy.max(), xx.min() - xs.max(), xs.min() - xx.max()))
        if gap <= reach:
            region |= labels == i + 1
    grown = np.pad(region, 2)  # a margin keeps the anti-aliased rim of the strokes and faint bits of ink
    region = np.logical_or.reduce([grown[dy : dy + ph, dx : dx + pw] for dy in range(5) for dx in range(5)])
    return np.kron(region, np.ones((f, f), dtype=bool))[:h, :w]


def ink_map(gray: Array) -> Array:
    """Gray image -> ink in [0, 1] (bright ink on 0), background and everything but the digit set to 0."""
    h, w = gray.shape
    if max(h, w) > WORK_SIDE:
        gray = resize(gray, max(1, round(h * WORK_SIDE / max(h, w))), max(1, round(w * WORK_SIDE / max(h, w))))
    r = ink_up(gray)
    rb = box_blur(r, 1 if max(r.shape) <= 256 else 2)
    paper = float(np.median(r))  # ink covers less than half of the picture (blurred ink may not)
    noise, blur_noise = lower_spread(r, paper), lower_spread(rb, paper)
    # Otsu splits ink from paper when there is enough ink; a small faint digit needs the noise-based bound.
    ink = (rb > otsu(rb)) & (rb > paper + 5 * blur_noise)
    if not ink.any():
        raise UserError("no digit found: the image looks blank")
    core = r[ink] > otsu(r[ink])  # the stroke's inside, without the rim that blurring added to the mask
    level = float(np.median(r[ink][core])) if core.any() else float(r[ink].max())
    if level < 0.02 or float(np.median(rb[ink])) - paper < 6 * blur_noise:
        raise UserError("no digit found: the image looks blank (no ink stands out from the background)")
    lo = min(max(2 / 255, 4 * noise), 0.5 * level)
    return np.clip((r - lo) / (level - lo), 0, 1) * _digit_region(ink)


def _crop(s: Array) -> Array:
    if not s.any():
        raise UserError("no digit found: the image looks blank")
    rows, cols = np.nonzero(s.any(axis=1))[0], np.nonzero(s.any(axis=0))[0]
    return s[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _restroke(s: Array) -> Array:
    """Bring the stroke width into MNIST's range (a fine pen on a big photo would fade away at 20 px)."""
    w20 = stroke_width(s) * BOX / max(s.shape)
    if THIN <= w20 <= THICK or max(s.shape) <= BOX:  # at MNIST's own size a stroke is what it is
        return s
    k = max(1, max(s.shape) // CANVAS)  # max-pool first: thin lines survive the shrink at full strength
    h, w = -(-s.shape[0] // k), -(-s.shape[1] // k)
    s = np.pad(s, ((0, h * k - s.shape[0]), (0, w * k - s.shape[1]))).reshape(h, k, w, k).max(axis=(1, 3))
    scale = CANVAS / max(h, w)
    s = np.pad(resize(s, max(1, round(h * scale)), max(1, round(w * scale))), 8)
    have = stroke_width(s) * BOX / CANVAS
    target = TARGET_THIN if w20 < THIN else TARGET_THICK
    radius = round((target - have) * CANVAS / BOX / 2)
    if radius > 0:
        return _crop(morph(s, radius, grow=True))
    if radius < 0:
        thinner = morph(s, -radius, grow=False)
        if thinner.sum() > 0.4 * s.sum():  # never erode a digit away
            return _crop(thinner)
    return _crop(s)


def to_mnist(gray: Array) -> Array:
    """Gray image -> the 28x28 uint8 MNIST-style image the net expects (white digit on black)."""
    s = _restroke(_crop(ink_map(gray)))
    h, w = s.shape
    scale = BOX / max(h, w)
    s = np.clip(resize(s, max(1, round(h * scale)), max(1, round(w * scale))), 0, 1)
    h, w = s.shape
    mass = float(s.sum())
    if mass <= 0:
        raise UserError("no digit found: the image looks blank")
    cy = float((s.sum(axis=1) * np.arange(h)).sum()) / mass
    cx = float((s.sum(axis=0) * np.arange(w)).sum()) / mass
    # MNIST's centre of mass sits at pixel (14, 14) on average; clamp so no ink is pushed off the canvas.
    oy, ox = min(max(round(SIZE / 2 - cy), 0), SIZE - h), min(max(round(SIZE / 2 - cx), 0), SIZE - w)
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[oy : oy + h, ox : ox + w] = s
    return np.round(out * 255).astype(np.uint8)


def preprocess(path: str | Path) -> Array:
    """Image file -> 28x28 uint8 MNIST-style digit; raises UserError (one line) for anything unusable."""
    return to_mnist(load_gray(path))
