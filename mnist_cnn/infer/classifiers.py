"""Run a trained net on 28x28 MNIST-style images, from a Lightning checkpoint or an ONNX export.

The ONNX path uses onnxruntime alone and never imports torch: a small install for serving. Both take
uint8 images (white ink on black, as `mnist_cnn.infer.preprocess` makes them) and return float32 logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mnist_cnn.cli import UserError
from mnist_cnn.infer import first_line

ONNX_INPUT, ONNX_OUTPUT = "image", "logits"  # names in every `mnist-export` model


class Classifier(Protocol):
    def logits(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 28, 28) -> float32 (N, classes)."""
        ...


NET_PACKAGE = "mnist_cnn."  # the only classes a checkpoint may name: it is untrusted input, and naming one runs it


def _targets(node: Any) -> list[str]:
    """Every `_target_` in a nested config, nested ones too (Hydra builds those first)."""
    if isinstance(node, dict):
        return [str(node.get("_target_", ""))] * ("_target_" in node) + [t for v in node.values() for t in _targets(v)]
    return [t for v in node for t in _targets(v)] if isinstance(node, list | tuple) else []


def load_classifier(path: str | Path, key: str | None = None) -> Any:
    """Checkpoint -> MNISTClassifier in eval mode on the CPU; any unusable file is one UserError naming it.

    Read weights-only, and the net it names must be a class of this package (a config you wrote may name any
    class; a checkpoint someone sent may not). Its optimizer and scheduler are never built.
    """
    from mnist_cnn.callbacks.checkpoints import load_checkpoint
    from mnist_cnn.models.module import MNISTClassifier

    ckpt = load_checkpoint(path, key=key)
    hparams, where = dict(ckpt.get("hyper_parameters") or {}), f"{key}={path}" if key else str(path)
    net = hparams.get("net")
    if refused := [t for t in _targets(net) if not t.startswith(NET_PACKAGE)] if isinstance(net, dict) else ["none"]:
        raise UserError(f"{where}: refused: its net must be a class under {NET_PACKAGE!r}, not {refused[0]!r}")
    hparams |= {"optimizer": {"_target_": "torch.optim.SGD", "_partial_": True}, "scheduler": None, "compile": False}
    try:
        model = MNISTClassifier(**hparams)
        model.load_state_dict(ckpt["state_dict"])
    except Exception as err:  # missing hparams, other weights: a checkpoint of something else
        raise UserError(f"{where}: not an mnist-cnn model checkpoint ({first_line(err)})") from None
    return model.eval()


class TorchClassifier:
    """A Lightning checkpoint, run with torch on the CPU."""

    def __init__(self, path: Path) -> None:
        import torch

        self._torch = torch
        self.model = load_classifier(path)

    def logits(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():  # the model takes the uint8 pixels as they are (mnist_cnn/models/module.py)
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).unsqueeze(1)
            return self.model(x).float().numpy()


class OnnxClassifier:
    """An `mnist-export` ONNX model, run with onnxruntime (normalisation is inside the graph)."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("running an .onnx model needs onnxruntime: pip install 'mnist-cnn[onnx]'") from None
        if not path.is_file():
            raise UserError(f"{path}: no such model file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider chatter on stderr
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise UserError(f"{path}: not a readable ONNX model ({first_line(err)})") from None
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [ONNX_INPUT] or inputs[0].type != "tensor(uint8)":
            raise UserError(f"{path}: not an mnist-export model (expected one uint8 input {ONNX_INPUT!r})")

    def logits(self, images: np.ndarray) -> np.ndarray:
        feed = {ONNX_INPUT: np.ascontiguousarray(images, dtype=np.uint8)[:, None]}
        return np.asarray(self.session.run([ONNX_OUTPUT], feed)[0], dtype=np.float32)


def open_classifier(path: str | Path) -> Classifier:
    """`.onnx` -> onnxruntime; anything else is taken for a Lightning checkpoint."""
    path = Path(path)
    return OnnxClassifier(path) if path.suffix.lower() == ".onnx" else TorchClassifier(path)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
