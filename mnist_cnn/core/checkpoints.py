"""Checkpoint files: written atomically, read as untrusted input."""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

from mnist_cnn.core.errors import UserError, first_line
from mnist_cnn.core.io import atomic_write, may

# Checkpoints name what they rebuild; only these may be instantiated from one (a checkpoint is untrusted input).
ALLOWED_TARGETS = {"net": "mnist_cnn.", "optimizer": "torch.optim.", "scheduler": "torch.optim.lr_scheduler."}
# Where classes named by checkpoints of an earlier layout live now (the flat package before 2026-12).
MOVED = {"mnist_cnn.net.": "mnist_cnn.models.nets.", "mnist_cnn.module.": "mnist_cnn.models.module."}


def renamed(node: Any) -> Any:
    """`node` with every `_target_` of an earlier layout rewritten to where that class lives now (see MOVED)."""
    if isinstance(node, dict):
        out = {k: renamed(v) for k, v in node.items()}
        target = out.get("_target_")
        for old, new in MOVED.items():
            if isinstance(target, str) and target.startswith(old):
                out["_target_"] = new + target[len(old) :]
        return out
    if isinstance(node, list | tuple):
        return type(node)(renamed(v) for v in node)
    return node


def checked(kind: str, cfg: dict[str, Any], refused: str = "") -> dict[str, Any]:
    """Refuse a `_target_` `kind` may not name, nested ones too (Hydra builds those first); `refused` opens the line."""
    prefix = ALLOWED_TARGETS[kind]

    def walk(node: Any, key: str, top: bool = False) -> None:
        if isinstance(node, dict):
            target = str(node.get("_target_", ""))
            if (top or "_target_" in node) and not target.startswith(prefix):
                raise UserError(f"{refused}{key}._target_={target!r} is not allowed: it must start with {prefix!r}")
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list | tuple) else ()
        for k, v in items:
            walk(v, f"{key}.{k}")

    walk(cfg, f"model.{kind}", top=True)
    return cfg


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through the atomic writer; on any error the old file (if any) is untouched."""
    import torch

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as err:
        raise UserError(
            f"cannot write checkpoint {path}: {err.strerror or err}; checkpoints saved before are unchanged"
        ) from err


def load_checkpoint(path: str | Path, map_location: Any = "cpu", key: str = "checkpoint") -> dict[str, Any]:
    """Load a Lightning checkpoint of this project, or raise one `UserError` line naming the file (`key`: where the
    path came from). Always `torch.load(weights_only=True)`: a file carrying pickled code is refused (the code never
    runs), and the model config it carries may only name classes from `mnist_cnn` and `torch.optim`."""
    path = Path(path)
    where = f"{key}={path}" if key != "checkpoint" else f"checkpoint {path}"
    if not path.exists():
        raise UserError(f"{where}: no such file")
    if path.is_dir():
        raise UserError(f"{where} is a folder; give a checkpoint file in it, e.g. {path / 'last.ckpt'}")
    if not may(path, os.R_OK):
        raise UserError(f"{where}: cannot read it (permission denied)")
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        raise UserError(f"{where}: an empty file (0 bytes), not a checkpoint")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise UserError(f"{where}: truncated or corrupt (the zip archive torch.save writes is incomplete)")
    if not head.startswith(b"PK") and head[:1] != b"\x80":  # nor a pickle (torch's legacy format)
        raise UserError(f"{where}: not a PyTorch checkpoint file (neither a zip archive nor a pickle)")
    import torch  # only now: a wrong path is reported at once, without torch's import time

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a reference to {found.group(1)}" if found else "pickled Python objects"
        raise UserError(
            f"{where}: refused: it holds {what}, not just tensors and plain containers; "
            "such a file could run code when loaded, so it is never unpickled"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError) as err:
        raise UserError(
            f"{where}: not a readable checkpoint (truncated, corrupt or not a PyTorch file: {first_line(err)})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(
            f"{where}: a PyTorch file but not a Lightning checkpoint (no 'state_dict'); a bare state_dict, such as "
            "the seed script's, cannot be resumed"
        )
    if "hyper_parameters" in ckpt:
        ckpt["hyper_parameters"] = renamed(ckpt["hyper_parameters"])
    for name, value in (ckpt.get("hyper_parameters") or {}).items():  # what the model is rebuilt from
        if name in ALLOWED_TARGETS and isinstance(value, dict):
            checked(name, value, refused=f"{where}: refused: ")
        elif "_target_" in repr(value):
            raise UserError(f"{where}: refused: its hyper_parameters.{name} names a _target_, which is never built")
    return ckpt


def rng_states() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states as tensors and plain containers (loadable with weights_only)."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what `rng_states` saved: a resumed run draws the same random numbers as an uninterrupted one."""
    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
