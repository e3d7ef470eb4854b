"""`mnist-predict MODEL IMAGE_OR_FOLDER [...]`: read digits from a user's own images.

MODEL is a training checkpoint (.ckpt, run with torch) or an `mnist-export` model (.onnx, run with
onnxruntime alone). Each image goes through MNIST's preprocessing (`mnist_cnn.infer.preprocess`) first. A bad
file costs one line on stderr and a non-zero exit at the end, never the other files' predictions.
Imports stay light: torch is loaded only for a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mnist_cnn.cli import UserError

BATCH = 256
PROG = "mnist-predict"


def expand(args: list[Path]) -> tuple[list[Path], list[str]]:
    """Command-line paths -> image files (a folder gives every image under it, sorted) and error lines."""
    from mnist_cnn.infer.preprocess import IMAGE_SUFFIXES

    files: list[Path] = []
    errors: list[str] = []
    for arg in args:
        if arg.is_dir():
            found = sorted(
                p
                for p in arg.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            files += found
            if not found:
                errors.append(f"{arg}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        else:
            files.append(arg)  # read (and its errors reported) like every other file
    return files, errors


def show_input(folder: Path, path: Path, image: np.ndarray, taken: set[str]) -> None:
    """Save the 28x28 the net saw as PNG, named after the input (made unique within this run)."""
    from mnist_cnn.callbacks.figures import save_png

    name, n = f"{path.stem}.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}.png"
    taken.add(name)
    save_png(image, folder / name)


def predict(
    model_path: Path, inputs: list[Path], top_k: int = 3, show: Path | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Predictions for every readable image, and one error line per file that could not be read."""
    from mnist_cnn.infer.classifiers import open_classifier, softmax
    from mnist_cnn.infer.preprocess import preprocess

    model = open_classifier(model_path)  # first: a bad model is one error, not one per image
    files, errors = expand(inputs)
    paths: list[Path] = []
    images: list[np.ndarray] = []
    for path in files:
        try:
            images.append(preprocess(path))
            paths.append(path)
        except UserError as err:
            errors.append(f"{path}: {err}")
    if show is not None and images:
        show.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        for path, image in zip(paths, images, strict=True):
            show_input(show, path, image, taken)
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), BATCH):
        probs = softmax(model.logits(np.stack(images[start : start + BATCH])))
        for path, p in zip(paths[start : start + BATCH], probs, strict=True):
            order = np.argsort(-p, kind="stable")[:top_k]
            results.append(
                {
                    "path": str(path),
                    "digit": int(order[0]),
                    "confidence": round(float(p[order[0]]), 6),
                    "topk": [{"digit": int(d), "p": round(float(p[d]), 6)} for d in order],
                }
            )
    return results, errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read the digit in each image (photo, scan or drawing; MNIST's preprocessing is applied first). "
        "Prints path, digit and confidence per image; a bad file is one error line, the exit code 1.",
    )
    parser.add_argument("model", type=Path, help="a training checkpoint (.ckpt) or an mnist-export model (.onnx)")
    parser.add_argument("inputs", type=Path, nargs="+", help="image files (PNG, JPEG, BMP, WebP, ...) or folders")
    parser.add_argument("--json", action="store_true", help="print a JSON list with the top-k probabilities")
    parser.add_argument("--top-k", type=int, default=3, choices=range(1, 11), metavar="K", help="for --json (3)")
    parser.add_argument("--show-input", type=Path, metavar="DIR", help="save the 28x28 image the net saw, per file")
    args = parser.parse_args(argv)
    try:
        results, errors = predict(args.model, args.inputs, args.top_k, args.show_input)
    except UserError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    for line in errors:
        print(f"{PROG}: error: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['path']}\t{r['digit']}\t{r['confidence']:.4f}")
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
