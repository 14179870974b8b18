"""The Optuna study: storage, sampler, reference trials, budget, progress, resumption.

``run_search(task, space, kernel, settings)`` opens (or resumes) the study named ``settings.study``
in ``settings.storage`` (default: sqlite under ``outputs/search/``), enqueues the space's classic
patterns once, and runs trials until the study holds ``settings.n_trials`` counted trials in all
(scored or diverged; every worker and every earlier run counted), so a rerun of a killed search,
or a second worker on the same storage, finishes the same budget and never repeats a trial. With
several workers the study may end a trial or so past the budget: each worker checks the budget
before it starts a trial, and others may finish theirs meanwhile.

Workers send heartbeats; a trial whose worker died (SIGKILL, a lost machine) is marked FAIL by the
next worker that starts a trial once ``2 * heartbeat`` seconds passed, and retried
``settings.retries`` times with the same parameters.

>>> study = run_search(task, space, kernel, settings, seed=0)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import pathlib
import time
import warnings

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search import record
from search.config import KernelConfig, SearchConfig, SpaceConfig, TaskConfig
from search.objective import Diverged, Objective
from search.space import check_space, enqueue_params

__all__ = ["DEFAULT_STORAGE_DIR", "SAMPLERS", "EscapeRejections", "counted", "load_existing", "make_sampler",
           "make_storage", "open_study", "run_search", "spent"]

DEFAULT_STORAGE_DIR = pathlib.Path("outputs/search")
SCHEMA_ATTEMPTS = 5  # tries to open a storage whose tables another worker is creating

log = logging.getLogger("patternc.search")


def make_sampler(settings: SearchConfig, n_startup: int) -> optuna.samplers.BaseSampler:
    """The sampler named in ``search.sampler``, seeded, escaping runs of rejected candidates."""
    name, seed = settings.sampler, settings.seed
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
        raise ValueError(f"unknown search.sampler={name!r}; choose from {', '.join(SAMPLERS)}")
    return EscapeRejections(base, seed=seed)


class EscapeRejections(optuna.samplers.BaseSampler):
    """``base``, except that after ``streak`` rejected candidates in a row the next is drawn at random.

    Why: a rejected candidate is a PRUNED trial, and model-based samplers fit only what they see;
    GPSampler sees COMPLETE trials alone, so when its model favours a region the checks reject, it
    proposes that region again and again (seen: 40 rejections in a row, ending the run on
    ``search.max_rejected``). A random draw lands elsewhere; once scored, it moves the model on.

    >>> EscapeRejections(optuna.samplers.GPSampler(seed=0), seed=0)   # doctest: +SKIP
    """

    def __init__(self, base: optuna.samplers.BaseSampler, seed: int | None = None, streak: int = 3):
        self.base, self.streak = base, streak
        self.random = optuna.samplers.RandomSampler(seed=seed)
        self._escaping: set[int] = set()  # numbers of the trials being drawn at random

    def _rejected_streak(self, study: optuna.Study) -> bool:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        last = finished[-self.streak:]  # in trial-number order
        return len(last) == self.streak and all(t.user_attrs.get(record.STATUS) == "rejected" for t in last)

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


SAMPLERS = ("tpe", "nsga2", "gp", "random")


def make_storage(settings: SearchConfig) -> RDBStorage:
    """The study's storage: ``search.storage`` (any SQLAlchemy URL Optuna takes, e.g.
    ``postgresql://user@host/db``) or a sqlite file per study under ``outputs/search/``."""
    url = settings.storage
    if url is None:
        DEFAULT_STORAGE_DIR.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{DEFAULT_STORAGE_DIR / settings.study}.db"
    if settings.heartbeat < 1 or settings.retries < 0:
        raise ValueError(f"search.heartbeat must be >= 1 second and search.retries >= 0, got "
                         f"{settings.heartbeat} and {settings.retries}")
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" (Optuna 2.8); we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.retries)
                return RDBStorage(url, heartbeat_interval=settings.heartbeat,
                                  grace_period=2 * settings.heartbeat, heartbeat_stale_trial_callback=retry)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers started together on an empty database race to create Optuna's tables; PostgreSQL
            # fails the loser's CREATE TYPE/TABLE (duplicate key in pg_type). The tables exist next time.
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise ValueError(f"cannot create Optuna's tables in search.storage={url} after "
                                 f"{SCHEMA_ATTEMPTS} attempts (other workers creating them?)") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as error:  # SQLAlchemy's errors name the driver or the server that failed
            raise ValueError(f"cannot open search.storage={url}: {type(error).__name__}: {error}") from None


def load_existing(settings: SearchConfig) -> optuna.Study:
    """The study ``settings.study`` as it stands, for a report: never creates a storage or a study.

    >>> load_existing(SearchConfig(study="large_fixed_window_majority")).trials   # doctest: +SKIP
    """
    if settings.storage is None:
        path = DEFAULT_STORAGE_DIR / f"{settings.study}.db"
        if not path.is_file():
            found = sorted(p.stem for p in DEFAULT_STORAGE_DIR.glob("*.db"))
            raise ValueError(f"no study {settings.study!r}: {path} does not exist (studies under "
                             f"{DEFAULT_STORAGE_DIR}/: {', '.join(found) or 'none'}); set search.study, "
                             f"or search.storage for a study elsewhere")
    storage = make_storage(settings)
    try:
        return optuna.load_study(study_name=settings.study, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise ValueError(f"no study {settings.study!r} in {settings.storage or 'outputs/search/'}; "
                         f"studies there: {', '.join(names) or 'none'}") from None


def counted(trial: FrozenTrial) -> bool:
    """Does a trial spend the budget? Scored trials do, and so do trials whose training diverged
    (an outcome of the candidate). Rejected candidates (PRUNED, milliseconds) do not, nor do trials
    failed because their worker died: those are retried."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and trial.user_attrs.get(record.STATUS) == "diverged")


def spent(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def open_study(settings: SearchConfig, sampler: optuna.samplers.BaseSampler,
               space: SpaceConfig) -> optuna.Study:
    """Create the study, or load it when it exists (a resumed run, a second worker).

    Only the worker that creates the study enqueues the reference trials, so two workers starting
    together never enqueue them twice.
    """
    storage = make_storage(settings)
    try:
        study = optuna.create_study(study_name=settings.study, storage=storage, sampler=sampler,
                                    directions=list(record.DIRECTIONS))
    except optuna.exceptions.DuplicatedStudyError:
        # a second worker or a rerun must not redraw the first worker's candidates: only the worker
        # that creates the study samples from search.seed
        sampler.reseed_rng()
        study = optuna.load_study(study_name=settings.study, storage=storage, sampler=sampler)
        directions = tuple(d.name.lower() for d in study.directions)
        if directions != record.DIRECTIONS:
            raise ValueError(f"study {settings.study!r} in {settings.storage or 'outputs/search/'} has "
                             f"objectives {directions}, not {record.DIRECTIONS}: choose another "
                             f"search.study") from None
        return study
    if settings.references:
        for name in space.references:
            study.enqueue_trial(enqueue_params(space, name), user_attrs={record.REFERENCE: name})
    return study


class _Budgeted:
    """The objective, refusing to start a trial once the study's budget is spent (another worker
    may have spent it while this one was training): the trial is pruned as "over budget"."""

    def __init__(self, objective: Objective, budget: int):
        self.objective, self.budget = objective, budget

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        if spent(trial.study) >= self.budget:
            trial.set_user_attr(record.STATUS, "over budget")
            trial.study.stop()
            raise optuna.TrialPruned("the study's budget was spent by other trials")
        return self.objective(trial)


def run_search(task: TaskConfig, space: SpaceConfig, kernel: KernelConfig, settings: SearchConfig,
               seed: int = 0, progress: bool = True) -> optuna.Study:
    """Run (or resume) the study until it holds ``settings.n_trials`` finished trials."""
    check_space(space)
    if settings.n_trials < 1:
        raise ValueError(f"search.n_trials must be at least 1, got {settings.n_trials}")
    objective = _Budgeted(Objective(task, space, kernel, seed=seed), settings.n_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    study = open_study(settings, make_sampler(settings, n_startup=max(4, settings.n_trials // 3)), space)
    done = spent(study)
    bar = tqdm(total=settings.n_trials, initial=min(done, settings.n_trials), unit="trial",
               desc=f"study {settings.study}", disable=not progress, dynamic_ncols=True)
    started = time.perf_counter()
    rejected_here = 0

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal rejected_here
        finished = spent(study)
        bar.n = min(finished, settings.n_trials)
        bar.refresh()
        line = trial_line(trial, finished, settings.n_trials)
        bar.write(line) if progress else log.info(line)
        if finished >= settings.n_trials:
            study.stop()
        elif trial.state == TrialState.PRUNED:
            rejected_here += 1
            if rejected_here >= settings.max_rejected:
                bar.write(f"stopping: {rejected_here} candidates rejected in this worker "
                          f"(search.max_rejected); the space's density budget or depth rules out "
                          f"almost everything in it")
                study.stop()

    if done < settings.n_trials:
        study.optimize(objective, timeout=settings.timeout, catch=(Diverged,), gc_after_trial=False,
                       callbacks=[after_trial])
    bar.close()
    log.info("search ran %.0f s in this worker", time.perf_counter() - started)
    return study


def trial_line(trial: FrozenTrial, finished: int, budget: int) -> str:
    """One log line per finished trial: state, objectives, checks, expression, seconds."""
    attrs = trial.user_attrs
    name = f" [{attrs[record.REFERENCE]}]" if record.REFERENCE in attrs else ""
    pattern = attrs.get(record.EXPRESSION)
    seconds = sum(attrs.get(record.DURATIONS, {}).values())
    head = f"trial {trial.number:>3} ({finished}/{budget}){name}"
    if trial.state == TrialState.PRUNED:
        return f"{head} rejected in {1e3 * seconds:.0f} ms: {attrs.get(record.REJECTED)} | {pattern}"
    if trial.state == TrialState.FAIL:
        return f"{head} failed ({attrs.get(record.STATUS, 'error')}) | {pattern}"
    accuracy, cost = trial.values
    feasible = all(v <= 0 for v in trial.constraints.values())
    return (f"{head} accuracy {accuracy:.3f} cost {cost:.3f}x density {attrs.get(record.DENSITY, 0):.3f} "
            f"mixing {attrs.get(record.MIXING_DEPTH)}{'' if feasible else ' (infeasible)'} "
            f"in {seconds:.0f} s | {pattern}")
