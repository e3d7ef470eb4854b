# ruff: noqa: E501  (expected messages are written out in full)
"""Folders an unprivileged user cannot read or write: one `error:` line each, before any work.

CI runs as root, which ignores file modes, so these run `python train.py` as `nobody` with no capability
at all (tests/inject.py `as_unprivileged`): the files really are unreadable to it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from inject import as_unprivileged, world_readable_dir

QUICK = ("debug=limit", "data.val_size=50", "logger=none", "trainer.accelerator=cpu")


@pytest.fixture
def world_readable() -> Iterator[Path]:
    with world_readable_dir() as root:
        yield root


def test_unreadable_and_unwritable_folders_as_an_unprivileged_user(world_readable: Path) -> None:
    root, tiny, unused = world_readable, world_readable / "tiny", f"hydra.run.dir={world_readable / 'unused'}"
    shutil.copytree(tiny, root / "secret")
    (root / "secret" / "MNIST" / "raw").chmod(0o000)
    shutil.copytree(tiny, root / "secret_file")
    (image := root / "secret_file" / "MNIST" / "raw" / "train-images-idx3-ubyte").chmod(0o000)
    (ckpt := root / "private.ckpt").write_bytes(b"PK")
    ckpt.chmod(0o000)
    (readonly := root / "readonly").mkdir()
    readonly.chmod(0o555)
    cases = [
        (
            [f"data.data_dir={root / 'secret'}", unused],
            f"cannot read the folder {root / 'secret' / 'MNIST' / 'raw'}: permission denied (needs read and execute)",
        ),
        ([f"data.data_dir={root / 'secret_file'}", unused], f"cannot read {image}: permission denied"),
        (
            [f"data.data_dir={tiny}", f"ckpt_path={ckpt}", unused],
            f"ckpt_path={ckpt}: cannot read it (permission denied)",
        ),
        (
            [f"data.data_dir={tiny}", f"hydra.run.dir={readonly / 'run'}"],
            f"cannot write {readonly / 'run'}: Permission denied; choose a writable folder (MNIST_LOG_DIR, hydra.run.dir=)",
        ),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda c: as_unprivileged([*QUICK, *c[0]], root / "home"), cases))
    for (args, message), proc in zip(cases, procs, strict=True):
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert proc.stderr.strip() == f"error: {message}", args
    assert not (readonly / "run").exists() and not (root / "unused").exists()
