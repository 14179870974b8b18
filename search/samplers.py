"""Optuna's samplers as the search uses them: seeded, and escaping runs of rejected candidates."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.config import SAMPLERS
from search.errors import ConfigError

__all__ = ["EscapeRejections", "make_sampler"]


def make_sampler(name: str, seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` (``search.sampler``), seeded, escaping runs of rejected candidates.

    >>> sampler = make_sampler("gp", seed=0, n_startup=4)
    >>> type(sampler).__name__, type(sampler.base).__name__
    ('EscapeRejections', 'GPSampler')
    >>> make_sampler("cmaes", seed=0, n_startup=4)
    Traceback (most recent call last):
      ...
    search.errors.ConfigError: search.sampler must be one of tpe, nsga2, gp, random, got 'cmaes'
    """
    if name == "tpe":
        # constant_liar: parallel workers do not all sample the same point while trials run
        base = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                          constant_liar=True)
    elif name == "nsga2":
        base = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, n_startup))
    elif name == "gp":
        base = optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    elif name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ConfigError(f"search.sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return EscapeRejections(base, seed=seed)


class EscapeRejections(optuna.samplers.BaseSampler):
    """``base``, except that after ``streak`` rejected candidates in a row the next is drawn at random.

    Why: a rejected candidate is a PRUNED trial, and model-based samplers fit only what they see;
    GPSampler sees COMPLETE trials alone, so when its model favours a region the checks reject, it
    proposes that region again and again (seen: 40 rejections in a row, ending the run on
    ``search.max_rejected``). A random draw lands elsewhere; once scored, it moves the model on.

    >>> class Half(optuna.samplers.RandomSampler):  # a base that always proposes x = 0.5
    ...     def sample_independent(self, *args):
    ...         return 0.5
    >>> study = optuna.create_study(sampler=EscapeRejections(Half(), seed=0, streak=3))
    >>> for _ in range(4):
    ...     trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    ...     print(trial.number, trial.params["x"])
    ...     trial.set_user_attr("status", "rejected")  # as the objective records a rejected candidate
    ...     _ = study.tell(trial, state=TrialState.PRUNED)
    0 0.5
    1 0.5
    2 0.5
    3 0.5488135039273248
    """

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int | None = None, streak: int = 3):
        self.base, self.streak = base, streak
        self.random = optuna.samplers.RandomSampler(seed=seed)
        self._escaping: set[int] = set()  # numbers of the trials being drawn at random

    def _rejected_streak(self, study: optuna.Study) -> bool:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        last = finished[-self.streak:]  # in trial-number order
        return len(last) == self.streak and all(record.read(t).status == "rejected" for t in last)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._rejected_streak(study):
            self._escaping.add(trial.number)
        self.base.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return {} if trial.number in self._escaping else self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return {} if trial.number in self._escaping else self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        sampler = self.random if trial.number in self._escaping else self.base
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._escaping.discard(trial.number)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self.random.reseed_rng()
