"""An Optuna study kept in a database (`hydra.sweeper.storage`): resumed by a later command, or one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import QUIET, check, run_train
from test_sweep import overrides, rows

optuna = pytest.importorskip("optuna")

SEARCH = ("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "debug=limit", "data.val_size=50", *QUIET)


def test_a_stored_study_is_resumed_by_the_next_command(tiny_mnist: Path, tmp_path: Path) -> None:
    """README's `hydra.sweeper.storage=sqlite:///...`: a second command with the same study_name adds its
    trials to the first's, with parameters the study has not tried (a seeded sampler would replay them)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for part in ("first", "second"):
        check(run_train(*SEARCH, f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=resumed",
                        f"data.data_dir={tiny_mnist}", f"hydra.sweep.dir={tmp_path / part}"))  # fmt: skip
    study = optuna.load_study(study_name="resumed", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    lrs = [t.params["model.optimizer.lr"] for t in study.trials]
    ran = [float(overrides(r)["model.optimizer.lr"]) for part in ("first", "second") for r in rows(tmp_path / part)]
    assert ran == lrs and len(set(lrs)) == 4  # each command's jobs are the study's trials, none repeated
    results = yaml.safe_load((tmp_path / "second" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(t.value for t in study.trials))  # the whole study's best


def test_a_fresh_study_samples_as_the_seeded_tpe_sampler(tmp_path: Path) -> None:
    """The resumable sampler changes nothing for a new study: the same trials as optuna's own, same seed."""
    from mnist_cnn.config.study import ResumableTPESampler

    def lrs(sampler: object) -> list[float]:
        study = optuna.create_study(sampler=sampler, direction="maximize")
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=12)
        return [t.params["lr"] for t in study.trials]

    seeded = {"seed": 1234, "n_startup_trials": 8}
    assert lrs(ResumableTPESampler(**seeded)) == lrs(optuna.samplers.TPESampler(**seeded))


def test_a_storage_that_fails_is_one_error_line(tiny_mnist: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no_such_folder' / 'optuna.db'}"
    proc = run_train(*SEARCH, f"hydra.sweeper.storage={url}", f"data.data_dir={tiny_mnist}",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: hydra.sweeper.storage={url}: the Optuna study storage failed: "
        "OperationalError: (sqlite3.OperationalError) unable to open database file"
    ]
    assert not (tmp_path / "sweep").exists()  # before any trial


def test_optuna_2_under_sqlalchemy_2_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure the pins prevent (optuna 2.x asserts on its schema version under SQLAlchemy 2), as one line."""
    from importlib import metadata

    from mnist_cnn.core.errors import describe

    code = compile("def get_current_version():\n    assert None is not None\n", "storage.py", "exec")
    where: dict[str, object] = {"__name__": "optuna.storages._rdb.storage"}  # raised from optuna's storage code
    exec(code, where)
    monkeypatch.setattr(metadata, "version", lambda name: "2.1.9")
    monkeypatch.setattr("sys.argv", ["train.py", "-m", "hydra.sweeper.storage=sqlite:///optuna.db"])
    try:
        where["get_current_version"]()  # type: ignore[operator]
    except AssertionError as err:
        message = describe(err)
    assert message == (
        "hydra.sweeper.storage=sqlite:///optuna.db: the Optuna study storage failed: AssertionError; "
        'optuna 2.x needs SQLAlchemy<2: pip install -c constraints.txt -e ".[optuna]"'
    )
