"""`keep_freed_memory` (on by default in train.py): big step buffers come from malloc's reusable heap."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

# A fresh process, as train.py starts: where does a 16 MB buffer (a batch's activations) live?
WHERE = """
import sys, torch
from mnist_cnn.core.memory import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
x = torch.empty(4 << 20)
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
print(any(int(lo, 16) <= x.data_ptr() < int(hi, 16) for lo, hi in heap))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc; a no-op elsewhere")
def test_big_buffers_come_from_the_reusable_heap_not_fresh_mappings() -> None:
    """glibc's default maps such a block fresh and unmaps it on free: every step faults it in again, page by page."""

    def in_heap(mode: str) -> bool:
        out = subprocess.run([sys.executable, "-c", WHERE, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()[-1] == "True"

    assert not in_heap("off") and in_heap("on")
