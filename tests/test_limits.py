"""Fractional `trainer.limit_*_batches`, as Lightning users type them, with 1 and 2 processes on real MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import QUIET, check, metrics, real_data_dir, run_train

from mnist_cnn.data.datamodule import eval_batch_size


@pytest.mark.parametrize("n", [5000, 2500, 3334, 1667])
@pytest.mark.parametrize("limit", [0.05, 0.07, 0.1])
def test_a_fraction_always_keeps_one_evaluation_batch(n: int, limit: float) -> None:
    size = eval_batch_size(n, 1000, limit)
    assert int(math.ceil(n / size) * limit) >= 1  # Lightning's rule, which refused 0.1 of 5 batches
    assert size >= min(1000, int(n * limit)) - 1  # no smaller than it must be: evaluation stays in big batches


def test_whole_numbers_and_full_fractions_keep_the_configured_batches() -> None:
    assert [eval_batch_size(5000, 1000, limit) for limit in (1.0, 2, 1, 0.0)] == [1000, 1000, 1000, 1000]


@pytest.mark.parametrize(
    ("processes", "limits", "n_test"),
    [(1, (0.05, 0.1, 0.1), 1000), (2, (0.05, 0.05, 0.05), 500)],  # lightning-hydra-template's test settings
)
def test_fractional_limits_train_validate_and_test(
    tmp_path: Path, processes: int, limits: tuple[float, float, float], n_test: int
) -> None:
    ddp = ["trainer=ddp_cpu", f"trainer.devices={processes}"] if processes > 1 else []
    train, val, test = limits
    check(run_train(*ddp, "trainer.max_epochs=1", f"++trainer.limit_train_batches={train}",
                    f"++trainer.limit_val_batches={val}", f"++trainer.limit_test_batches={test}", "logger=none",
                    f"data.data_dir={real_data_dir()}", f"hydra.run.dir={tmp_path}", *QUIET))  # fmt: skip
    m = metrics(tmp_path)
    assert m["n_test"] == n_test and 0.5 < m["test/acc"] <= 1 and 0.5 < m["val/acc_best"] <= 1
