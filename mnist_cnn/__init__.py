"""mnist-cnn: the seed article's MNIST CNN as Lightning + Hydra experiment code.

Kept import-light on purpose: console scripts import this before deciding what else they need.
"""

from pathlib import Path

_PKG = Path(__file__).resolve().parent
# A wheel ships the configs inside the package; a source checkout (editable install) has them beside it.
CONFIG_DIR = str(_PKG / "conf" if (_PKG / "conf").is_dir() else _PKG.parent / "conf")
