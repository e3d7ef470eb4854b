"""`mnist-export CHECKPOINT --format onnx --output model.onnx`: the trained net as a standalone ONNX model.

The graph takes uint8 pixels (N, 1, 28, 28), white ink on black as `mnist_cnn.infer.preprocess` makes them,
and does the training normalisation itself, so a consumer needs no constants from this package; the
batch axis is dynamic. The export is checked against the checkpoint before the command reports success.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mnist_cnn.cli import UserError
from mnist_cnn.infer import first_line
from mnist_cnn.infer.classifiers import ONNX_INPUT, ONNX_OUTPUT, OnnxClassifier, load_classifier

TOLERANCE = 1e-4  # max |logit difference| allowed between the ONNX model and the checkpoint


def export_onnx(checkpoint: Path, output: Path, opset: int | None = None) -> float:
    """Write the ONNX model, check it against the checkpoint; returns the max |logit difference| seen."""
    import torch

    model = load_classifier(checkpoint)  # its forward takes uint8 and normalises: the graph does too
    example = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    output.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                verbose=False,
            )
        except ImportError as err:
            raise UserError(f"ONNX export needs onnx and onnxscript: pip install 'mnist-cnn[onnx]' ({err})") from None
    assert program is not None
    program.model.metadata_props.update(
        {"mnist_cnn.input": "uint8 (batch, 1, 28, 28): white digit on black (mnist_cnn/models/module.py)"}
    )
    program.save(str(output))
    return parity(model, output)


def parity(model: Any, onnx_path: Path, batches: tuple[int, ...] = (1, 7, 64)) -> float:
    """Max |logit difference| of the ONNX file vs the torch model on random images of several batch sizes."""
    import torch

    session, worst = OnnxClassifier(onnx_path), 0.0
    rng = np.random.default_rng(0)
    for n in batches:
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with torch.inference_mode():
            expected = model(torch.from_numpy(images).unsqueeze(1)).numpy()
        worst = max(worst, float(np.abs(session.logits(images) - expected).max()))
    if worst > TOLERANCE:
        raise UserError(f"{onnx_path}: the ONNX model disagrees with the checkpoint (max |logit diff| {worst:.2g})")
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mnist-export",
        description="Export a checkpoint's net as a standalone ONNX model: uint8 images (batch, 1, 28, 28) in, "
        "logits (batch, 10) out, normalisation inside, dynamic batch axis; checked against the checkpoint.",
    )
    parser.add_argument("checkpoint", type=Path, help="a Lightning checkpoint from a training run (.ckpt)")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    parser.add_argument("--output", "-o", type=Path, help="where to write (default: the checkpoint's name, .onnx)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    args = parser.parse_args(argv)
    output = args.output or args.checkpoint.with_suffix(".onnx")
    try:
        diff = export_onnx(args.checkpoint, output, args.opset)
    except UserError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except Exception as err:  # an exporter failure: say what, in one line
        parser.exit(1, f"{parser.prog}: error: export failed ({first_line(err)})\n")
    print(f"wrote {output} (uint8 image (batch, 1, 28, 28) -> logits (batch, 10); max |logit diff| {diff:.1e})")


if __name__ == "__main__":
    main()
