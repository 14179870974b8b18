"""Optuna's samplers as the search uses them: seeded, and escaping runs of rejected candidates."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.config import SAMPLERS
from search.errors import ConfigError

__all__ = ["EscapeRejections", "WithParams", "make_sampler"]


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
    # NSGA-II finds its generations by indexing the study's trials with trial numbers, so it must see
    # every trial: on a space whose references are expressions it has no joint space to cross over
    return EscapeRejections(base, seed=seed, hide_paramless=name != "nsga2")


class EscapeRejections(optuna.samplers.BaseSampler):
    """``base``, except that after ``streak`` rejected candidates in a row the next is drawn at random.

    Why: a rejected candidate is a PRUNED trial, and model-based samplers fit only what they see;
    GPSampler sees COMPLETE trials alone, so when its model favours a region the checks reject, it
    proposes that region again and again (seen: 40 rejections in a row, ending the run on
    ``search.max_rejected``). A random draw lands elsewhere; once scored, it moves the model on.

    With ``hide_paramless``, ``base`` sees the study without its finished trials that have no
    parameters (``WithParams``).

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

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int | None = None, streak: int = 3,
                 hide_paramless: bool = False):
        self.base, self.streak, self.hide_paramless = base, streak, hide_paramless
        self.random = optuna.samplers.RandomSampler(seed=seed)
        self._escaping: set[int] = set()  # numbers of the trials being drawn at random

    def _rejected_streak(self, study: optuna.Study) -> bool:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        last = finished[-self.streak:]  # in trial-number order
        return len(last) == self.streak and all(record.read(t).status == "rejected" for t in last)

    def _view(self, study: optuna.Study):
        return WithParams(study) if self.hide_paramless else study

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._rejected_streak(study):
            self._escaping.add(trial.number)
        self.base.before_trial(self._view(study), trial)

    def infer_relative_search_space(self, study, trial):
        if trial.number in self._escaping:
            return {}
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study, trial, search_space):
        if trial.number in self._escaping:
            return {}
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if trial.number in self._escaping:
            return self.random.sample_independent(study, trial, param_name, param_distribution)
        return self.base.sample_independent(self._view(study), trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._escaping.discard(trial.number)
        self.base.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self.random.reseed_rng()


class WithParams:
    """``study`` as a model-based sampler should see it: without its finished trials that have no
    parameters, the classic references written as an expression (``causal & window(ceil(n / 8))``
    is no point of the space). GP, NSGA-II and multivariate TPE model the parameters that every
    finished trial has (the intersection of their search spaces); one trial with none leaves them
    nothing to model together, and they draw each parameter on its own, GP and NSGA-II at random.
    The view drops trials, so a sampler that indexes the trials by number (NSGA-II) cannot use it.

    >>> study = optuna.create_study()
    >>> study.enqueue_trial({})  # a reference written as an expression
    >>> study.optimize(lambda t: 1.0, n_trials=1)
    >>> study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    >>> together = optuna.search_space.intersection_search_space
    >>> list(together(study.get_trials())), list(together(WithParams(study).get_trials()))
    ([], ['x'])
    """

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def _get_trials(self, *args, **kwargs) -> list[FrozenTrial]:
        return _with_params(self._study._get_trials(*args, **kwargs))

    def get_trials(self, *args, **kwargs) -> list[FrozenTrial]:
        return _with_params(self._study.get_trials(*args, **kwargs))


def _with_params(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.params or not t.state.is_finished()]
