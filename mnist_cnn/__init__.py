"""mnist-cnn: the seed article's MNIST CNN as Lightning + Hydra experiment code.

Kept import-light on purpose: console scripts import this before deciding what else they need.
"""

import time
from pathlib import Path

STARTED = time.perf_counter()  # process start, near enough: `train.py` imports this first (see startup_s)

_PKG = Path(__file__).resolve().parent
# A wheel ships the configs inside the package; a source checkout (editable install) has them beside it.
CONFIG_DIR = str(_PKG / "conf" if (_PKG / "conf").is_dir() else _PKG.parent / "conf")


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class UserError(Exception):
    """A problem the user can fix (bad config, missing data): reported as one line, no traceback."""
