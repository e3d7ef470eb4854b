"""The Optuna search's sampler (conf/hparams_search/optuna.yaml): TPE that continues a stored study.

A study kept in `hydra.sweeper.storage` and run again with the same `study_name` gets new trials, but a
seeded sampler starts its random streams afresh: the resumed search would draw its random start-up trials
again, the very parameters the study already has. Here the streams are seeded with `seed + the number of the
study's first new trial`, so a fresh study samples exactly as `optuna.samplers.TPESampler(seed=seed)` and a
resumed one continues with parameters it has not tried.
"""

from __future__ import annotations

from typing import Any

from optuna.samplers import TPESampler


class ResumableTPESampler(TPESampler):
    """`TPESampler` that reseeds itself from the trial number when it first samples for a study."""

    def __init__(self, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._seed, self._kwargs, self._seeded = seed, kwargs, False

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        # The first call of each trial (optuna builds a trial's relative search space before sampling).
        if not self._seeded:
            self._seeded = True
            if self._seed is not None and trial.number > 0:  # a resumed study: trials 0..number-1 exist
                super().__init__(seed=self._seed + trial.number, **self._kwargs)  # the public way to seed it
        return super().infer_relative_search_space(study, trial)
