"""Digit images as users make them: pen strokes, fonts and real MNIST shapes redrawn large, dark ink on
noisy, unevenly lit paper, off-centre, saved as PNG or JPEG. Deterministic for a given seed."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = sorted(Path("/usr/share/fonts").rglob("*.ttf"))
Points = list[tuple[float, float]]


def arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 24) -> Points:
    """Points on an ellipse from angle a0 to a1 (degrees, 0 = right, 90 = down: image coordinates)."""
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in np.linspace(a0, a1, n)]


# Each digit as pen strokes in a unit box (x right, y down), roughly as people write them.
STROKES: dict[int, list[Points]] = {
    0: [arc(0.5, 0.5, 0.32, 0.48, -90, 275)],
    1: [[(0.35, 0.2), (0.55, 0.0), (0.55, 1.0)]],
    2: [[*arc(0.5, 0.28, 0.32, 0.27, 190, 380), (0.12, 1.0), (0.9, 1.0)]],
    3: [arc(0.45, 0.26, 0.3, 0.25, 200, 450), arc(0.45, 0.74, 0.34, 0.26, 270, 520)],
    4: [[(0.6, 0.0), (0.08, 0.68), (0.95, 0.68)], [(0.7, 0.3), (0.7, 1.0)]],
    5: [[(0.85, 0.0), (0.25, 0.0), (0.2, 0.45)], arc(0.48, 0.7, 0.36, 0.3, 230, 500)],
    6: [[(0.75, 0.0), (0.35, 0.35), *arc(0.5, 0.7, 0.32, 0.3, 200, 560)]],
    7: [[(0.08, 0.02), (0.92, 0.02), (0.4, 1.0)]],
    8: [arc(0.5, 0.25, 0.26, 0.25, 90, 450), arc(0.5, 0.73, 0.32, 0.27, -90, 270)],
    9: [arc(0.5, 0.3, 0.32, 0.3, 0, 360), [(0.82, 0.3), (0.75, 1.0)]],
}


def pen_digit(digit: int, rng: np.random.Generator, size: int, pen: tuple[float, float] = (0.02, 0.12)) -> Image.Image:
    """A digit drawn with a pen (width a fraction of `size`): the strokes above, slanted, squashed and
    wobbled, ink white on black."""
    shear, sx, sy = rng.uniform(-0.3, 0.15), rng.uniform(0.55, 0.85), rng.uniform(0.8, 1.0)
    width = max(2, round(size * rng.uniform(*pen)))
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for stroke in STROKES[digit]:
        pts = np.array(stroke) + rng.normal(0, 0.02, (len(stroke), 2))
        x = (pts[:, 0] - 0.5) * sx + (pts[:, 1] - 0.5) * shear
        y = (pts[:, 1] - 0.5) * sy
        xy = [(size / 2 + u * size * 0.8, size / 2 + v * size * 0.8) for u, v in zip(x, y, strict=True)]
        draw.line(xy, fill=255, width=width, joint="curve")
        for u, v in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((u - width / 2, v - width / 2, u + width / 2, v + width / 2), fill=255)
    return img


def font_digit(digit: int, rng: np.random.Generator, size: int) -> Image.Image:
    """A digit typed in one of the system fonts, white on black."""
    if FONTS:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.truetype(
            str(FONTS[rng.integers(len(FONTS))]), round(size * 0.7)
        )
    else:  # no system fonts: Pillow's own
        font = ImageFont.load_default(size=round(size * 0.7))
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).text((size / 2, size / 2), str(digit), fill=255, font=font, anchor="mm")
    return img


def mnist_digit(image: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """A real MNIST digit redrawn as a user's: upscaled, re-inked as a solid stroke of a different pen."""
    big = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC)
    big = big.point(lambda v: 255 if v > 110 else 0)
    grow = int(rng.integers(-1, 2)) * max(1, size // 100)
    if grow:
        big = big.filter(ImageFilter.MaxFilter(2 * grow + 1) if grow > 0 else ImageFilter.MinFilter(-2 * grow + 1))
    return big


def on_paper(ink: Image.Image, rng: np.random.Generator, dark_on_light: bool = True) -> Image.Image:
    """Put a white-on-black glyph on a bigger noisy, unevenly lit sheet, off-centre, as dark ink."""
    w, h = int(rng.integers(90, 520)), int(rng.integers(90, 520))
    bbox = ink.getbbox() or (0, 0, ink.width, ink.height)
    glyph = ink.crop(bbox)
    scale = rng.uniform(0.35, 0.8) * min(w, h) / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))))
    x, y = int(rng.integers(0, w - glyph.width + 1)), int(rng.integers(0, h - glyph.height + 1))
    alpha = np.zeros((h, w), dtype=np.float32)
    alpha[y : y + glyph.height, x : x + glyph.width] = np.asarray(glyph, dtype=np.float32) / 255
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    paper = rng.uniform(150, 235) + rng.uniform(-50, 50) * xx + rng.uniform(-50, 50) * yy
    pen = rng.uniform(10, 110)
    img = paper * (1 - alpha) + pen * alpha + rng.normal(0, rng.uniform(2, 16), (h, w))
    if rng.random() < 0.3:  # dust and specks
        for _ in range(int(rng.integers(1, 30))):
            sy, sx = int(rng.integers(h)), int(rng.integers(w))
            img[sy : sy + int(rng.integers(1, 4)), sx : sx + int(rng.integers(1, 4))] = pen
    if rng.random() < 0.3:  # out of focus
        blur = ImageFilter.GaussianBlur(rng.uniform(0.5, 2))
        img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(blur))
    img = np.clip(img if dark_on_light else 255 - img, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        tint = rng.uniform(0.85, 1.15, 3)
        return Image.fromarray(np.clip(img[..., None] * tint, 0, 255).astype(np.uint8), "RGB")
    return Image.fromarray(img, "L")


def user_digits(out: Path, n: int, seed: int = 0, mnist: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, int]:
    """Write n user-style digit images (PNG and JPEG) into `out`; returns file name -> true digit.

    Thirds: pen strokes, fonts, and (when `mnist` = (images, labels) is given) real MNIST shapes redrawn.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    labels: dict[str, int] = {}
    for i, (kind, digit, img) in enumerate(_glyphs(n, rng, mnist)):
        sheet = on_paper(img, rng, dark_on_light=i % 10 != 9)
        name = f"{i:04d}_{kind}_{digit}" + (".jpg" if i % 2 else ".png")
        sheet.save(out / name, quality=int(rng.integers(60, 95))) if name.endswith(".jpg") else sheet.save(out / name)
        labels[name] = digit
    return labels


def _glyphs(
    n: int, rng: np.random.Generator, mnist: tuple[np.ndarray, np.ndarray] | None
) -> Iterator[tuple[str, int, Image.Image]]:
    kinds = ["pen", "font", "mnist"] if mnist is not None else ["pen", "font"]
    for i in range(n):
        kind, size = kinds[i % len(kinds)], int(rng.integers(200, 400))
        if kind == "mnist" and mnist is not None:
            j = int(rng.integers(len(mnist[1])))
            yield kind, int(mnist[1][j]), mnist_digit(mnist[0][j], rng, size)
        else:
            digit = int(rng.integers(10))
            yield kind, digit, (pen_digit if kind == "pen" else font_digit)(digit, rng, size)
