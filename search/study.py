"""The Optuna study: opening it under its definition, reference trials, budget, workers, the end.

``run_search(task, space, kernel, settings)`` checks every value (``search.validate``), opens (or
resumes) the study that this run's definition names (``search.definition``), enqueues the space's
classic patterns that have no live trial, and runs trials until the study is *finished*
(``search.accounting``): ``settings.n_trials`` counted trials in all (every worker and every
earlier run counted), every reference scored, nothing RUNNING or WAITING. A rerun of a killed
search, or another worker on the same storage, finishes the same budget and never repeats a trial.
With several workers, a worker starts a sampled trial only while the trials counted and those running
elsewhere are fewer than the budget (then it waits for those, and takes over any that go stale), so
the study ends on the budget, or a trial past it when two workers start one at the same instant; a
reference retried after the budget was spent still runs (a yardstick is never dropped).

Workers send heartbeats; a trial whose worker died (SIGKILL, a lost machine) is marked FAIL once
``2 * heartbeat`` seconds passed without one, and retried ``settings.retries`` times with the same
parameters. A worker with nothing left to run but trials RUNNING elsewhere waits for them up to
``3 * heartbeat`` seconds: a dead worker's trial goes stale in that time and this worker retries it;
a live worker's heartbeat goes on, and that worker accounts for its own trial.

>>> from search.config import ModelConfig, MQARConfig, ParamSpec, ProxyConfig, TargetConfig, TrainConfig
>>> task = MQARConfig(n=32, pairs=3, distances=[2, 8, 32], model=ModelConfig(d_model=16, head_dim=4),
...                   train=TrainConfig(steps=4, batch=4, eval_sequences=16, threads=1))  # a smoke-test size
>>> space = SpaceConfig(name="window", template="causal & window(ceil($w * n))",
...                     params={"w": ParamSpec(type="float", low=0.05, high=0.5)},
...                     target=TargetConfig(layers=2, heads=4, head_dim=16, n=512, block=64),
...                     proxy=ProxyConfig(n=32, block=8), density_budget=1.0, require_mixing=False)
>>> kernel = KernelConfig(repeats=1, warmup=0)
>>> settings = SearchConfig(n_trials=1, storage=f"sqlite:///{tmp_path}/studies.db")  # one trial
>>> study = run_search(task, space, kernel, settings, seed=0, progress=False)
>>> [t.state.name for t in study.trials], study_account(study, settings, space).finished
(['COMPLETE'], True)
>>> len(run_search(task, space, kernel, settings, seed=0, progress=False).trials)  # a rerun: nothing to do
1
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search import record
from search.accounting import Account, account, missing_references, rejection_reasons, speaks_for, spent
from search.artifacts import open_store
from search.config import KernelConfig, SearchConfig, SpaceConfig, TaskConfig
from search.definition import DEFINITION, definition, differences, study_name
from search.errors import SpaceRejectsAll, StudyMismatch
from search.objective import Diverged, Objective, fits
from search.samplers import make_sampler
from search.scorer import check_search
from search.space import design, enqueue_params
from search.storage import fail_stale, make_storage, shown, url_of

__all__ = ["load_existing", "open_study", "run_search", "study_account", "trial_line"]

log = logging.getLogger("patternc.search")
DESIGNED = "design_enqueued"  # study attribute: the initial design is in the queue


def _where(settings: SearchConfig, name: str) -> str:
    return shown(url_of(settings, name))


def open_study(settings: SearchConfig, space: SpaceConfig, defined: dict, name: str) -> optuna.Study:
    """Create study ``name`` under ``defined``, or load it when it exists and has that definition.

    Whoever opens it then enqueues each reference that has no live trial, so a creator killed
    halfway through enqueueing, or a reference failed on a fault, is completed by the next run.
    """
    storage = make_storage(settings, name)
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=list(record.DIRECTIONS))
        study.set_user_attr(DEFINITION, defined)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        _check_definition(study, settings, defined)
    if settings.references:
        for reference in missing_references(study.get_trials(deepcopy=False), space.references):
            study.enqueue_trial(enqueue_params(space, reference), user_attrs={record.REFERENCE: reference})
    if settings.design and not study.user_attrs.get(DESIGNED):
        # once per study (a rerun or another worker finds it done): the sampler learns from these
        study.set_user_attr(DESIGNED, True)
        room = settings.n_trials - (len(space.references) if settings.references else 0)
        # only points within the space's budgets: a rejected one would teach the sampler nothing
        for params in design(space, fits=functools.partial(fits, space))[:max(0, room)]:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def _check_definition(study: optuna.Study, settings: SearchConfig, defined: dict) -> None:
    name, where = study.study_name, _where(settings, study.study_name)
    directions = tuple(d.name.lower() for d in study.directions)
    if directions != record.DIRECTIONS:
        raise StudyMismatch(f"study {name!r} in {where} has objectives {directions}, not "
                            f"{record.DIRECTIONS}: it is not a patternc-search study; choose another "
                            f"search.study")
    stored = study.user_attrs.get(DEFINITION)
    if stored is None and not study.get_trials(deepcopy=False):
        study.set_user_attr(DEFINITION, defined)  # its creator died before recording it
    elif stored is None:
        raise StudyMismatch(f"study {name!r} in {where} records no definition (an older patternc-search "
                            f"made it), so this run cannot tell whether its trials are comparable: "
                            f"choose another search.study, or leave it unset")
    elif stored != defined:
        raise StudyMismatch(
            f"study {name!r} in {where} was defined by other values than this run's: "
            + "; ".join(differences(stored, defined)) + ". Its trials would not compare with this run's: "
            "leave search.study unset (each definition gets its own study, this one "
            f"{study_name(defined)!r}) or choose another name")


def load_existing(settings: SearchConfig, defined: dict) -> optuna.Study:
    """The study of ``defined`` (or ``settings.study``) as it stands, for a report: never creates a
    storage or a study, and refuses one of another definition.

    >>> from search.config import MQARConfig
    >>> space = SpaceConfig(name="window")
    >>> settings = SearchConfig(study="mine", storage=f"sqlite:///{tmp_path}/studies.db")
    >>> defined = definition(MQARConfig(), space, KernelConfig(), seed=0)
    >>> _ = open_study(settings, space, defined, "mine")  # as run_search creates it
    >>> load_existing(settings, defined).study_name
    'mine'
    >>> load_existing(settings, definition(MQARConfig(), space, KernelConfig(), seed=1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    search.errors.StudyMismatch: study 'mine' in ... than this run's: seed: 0 in the study, 1 here. ...
    """
    name = settings.study or study_name(defined)
    url = url_of(settings, name)
    if settings.storage is None:
        from search.storage import DEFAULT_STORAGE_DIR

        path = DEFAULT_STORAGE_DIR / f"{name}.db"
        if not path.is_file():
            found = sorted(p.stem for p in DEFAULT_STORAGE_DIR.glob("*.db"))
            raise StudyMismatch(f"no study {name!r}: {path} does not exist (studies under "
                                f"{DEFAULT_STORAGE_DIR}/: {', '.join(found) or 'none'}); give the config "
                                f"the search ran with, set search.study, or search.storage for a study "
                                f"elsewhere")
    storage = make_storage(settings, name)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise StudyMismatch(f"no study {name!r} in {shown(url)}; studies there: "
                            f"{', '.join(names) or 'none'}") from None
    _check_definition(study, settings, defined)
    return study


def study_account(study: optuna.Study, settings: SearchConfig, space: SpaceConfig) -> Account:
    return account(study.get_trials(deepcopy=False), settings.n_trials,
                   space.references if settings.references else ())


def _seed_stream(study: optuna.Study, settings: SearchConfig) -> int:
    """The sampler seed of this run of worker ``settings.worker``: ``search.seed`` itself for the first
    run of worker 0, else a stream of it keyed by (worker, run), so no two workers or reruns redraw
    the same candidates and each is reproducible."""
    key = f"runs:worker{settings.worker}"
    runs = int(study.user_attrs.get(key, 0))
    study.set_user_attr(key, runs + 1)
    if settings.worker == 0 and runs == 0:
        return settings.seed
    return int(np.random.SeedSequence([settings.seed, settings.worker, runs]).generate_state(1)[0])


def _committed(trials: list[FrozenTrial]) -> int:
    """Trials that spend the budget or are running (in other workers) and will likely spend it: a
    worker starts a sampled trial only while these are fewer than the budget, so N workers do not
    overshoot it by N - 1 trials."""
    return spent(trials) + sum(t.state == TrialState.RUNNING for t in trials)


class _Accounted:
    """The objective, run only when a trial is still needed: a reference that another trial already
    speaks for is pruned as a duplicate, and a sampled trial as over budget once the budget is spent
    or committed to trials running elsewhere. Each trial records which worker ran it
    (its record's ``worker``)."""

    def __init__(self, objective: Objective, budget: int, worker: int):
        self.objective, self.budget = objective, budget
        self.worker = {"index": worker, "host": socket.gethostname(), "pid": os.getpid()}

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        trials = trial.study.get_trials(deepcopy=False)
        reference = trial.user_attrs.get(record.REFERENCE)
        if reference:
            other = speaks_for(trials, reference, trial.number)
            if other is not None:
                self._skip(trial, "duplicate", reference)
                raise optuna.TrialPruned(f"reference {reference} is trial {other}'s")
        elif _committed(trials) - 1 >= self.budget:  # - 1: this trial, RUNNING itself
            self._skip(trial, "over budget", reference)
            raise optuna.TrialPruned("the study's budget was spent by other trials")
        self.objective.worker = self.worker
        return self.objective(trial)

    def _skip(self, trial: optuna.Trial, status: str, reference: str | None) -> None:
        found = record.TrialRecord(status=status, reference=reference, worker=self.worker)
        trial.set_user_attr(record.RECORD, found.to_attr())


def _wait_for_others(study: optuna.Study, settings: SearchConfig, running: tuple[int, ...], say) -> bool:
    """Wait (at most 3 heartbeats) for trials RUNNING in other workers: True once one ended or went
    stale (failed and retried: there is work again), False when all are alive."""
    grace = 2 * settings.heartbeat
    say(f"waiting up to {grace + settings.heartbeat} s for trial {', '.join(map(str, running))} running "
        f"elsewhere: a dead worker's trial is stale after {grace} s without a heartbeat, then retried here")
    deadline = time.monotonic() + grace + settings.heartbeat
    while time.monotonic() < deadline:
        fail_stale(study)
        states = {t.number: t.state for t in study.get_trials(deepcopy=False) if t.number in running}
        if any(state != TrialState.RUNNING for state in states.values()):
            return True
        time.sleep(min(1.0, settings.heartbeat / 4))
    say(f"trial {', '.join(map(str, running))} kept sending heartbeats: live workers will finish them")
    return False


def run_search(task: TaskConfig, space: SpaceConfig, kernel: KernelConfig, settings: SearchConfig,
               seed: int = 0, progress: bool = True) -> optuna.Study:
    """Run (or resume) the study until it is finished, or this worker's time or patience runs out."""
    scorer = check_search(task, space, kernel, settings, seed)
    defined = definition(task, space, kernel, seed)
    name = settings.study or study_name(defined)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    study = open_study(settings, space, defined, name)
    study.sampler = make_sampler(settings.sampler, _seed_stream(study, settings),
                                 n_startup=max(4, settings.n_trials // 3))
    store = open_store(settings)  # checked writable: the dense reference and reusable scores
    objective = _Accounted(Objective(task, space, kernel, seed=seed, scorer=scorer, store=store),
                           settings.n_trials, settings.worker)
    done = spent(study.get_trials(deepcopy=False))
    bar = tqdm(total=settings.n_trials, initial=min(done, settings.n_trials),
               unit="trial", desc=f"study {name}", disable=not progress, dynamic_ncols=True)
    say = bar.write if progress else log.info
    started = time.monotonic()
    rejected_here = 0

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal rejected_here
        trials = study.get_trials(deepcopy=False)
        finished = spent(trials)
        bar.n = min(finished, settings.n_trials)
        bar.refresh()
        say(trial_line(trial, finished, settings.n_trials))
        if record.read(trial).status == "rejected":
            rejected_here += 1
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if rejected_here >= settings.max_rejected or (_committed(trials) >= settings.n_trials
                                                      and not waiting):
            study.stop()  # what is left runs in other workers: the loop below waits for it

    while True:
        left = None if settings.timeout is None else settings.timeout - (time.monotonic() - started)
        state = study_account(study, settings, space)
        if state.finished or (left is not None and left <= 0):
            break
        if state.waiting or state.spent + len(state.running) < settings.n_trials:
            try:
                study.optimize(objective, timeout=left, catch=(Diverged,), gc_after_trial=False,
                               callbacks=[after_trial])
            except UpdateFinishedTrialError as error:  # its heartbeat lapsed (a stalled database?)
                say(f"a trial of this worker was failed by another meanwhile; its retry scores it ({error})")
            if rejected_here >= settings.max_rejected and spent(study.get_trials()) < settings.n_trials:
                bar.close()
                raise SpaceRejectsAll(_hopeless(study, rejected_here, space), study)
        elif not (state.running and _wait_for_others(study, settings, state.running, say)):
            break  # the rest is in live workers' hands (they account for it), or a reference failed
    bar.close()
    say(f"study {name}: {study_account(study, settings, space).describe()} "
        f"(this worker ran {time.monotonic() - started:.0f} s)")
    return study


def _hopeless(study: optuna.Study, rejected: int, space: SpaceConfig) -> str:
    reasons = rejection_reasons(study.get_trials(deepcopy=False))
    count, example, _ = reasons[0]
    return (f"stopping: {rejected} candidates rejected in this worker (search.max_rejected) before the "
            f"budget was spent; commonest reason ({count} of them): {example}. The space "
            f"{space.name} rules out almost everything it proposes: widen its parameters or raise "
            f"space.density_budget")


def trial_line(trial: FrozenTrial, finished: int, budget: int) -> str:
    """One log line per finished trial: state, objectives, checks, expression, seconds."""
    found = record.read(trial)
    name = f" [{found.reference}]" if found.reference else ""
    pattern = found.expression
    seconds = sum((found.durations or {}).values())
    head = f"trial {trial.number:>3} ({finished}/{budget}){name}"
    status = found.status
    if trial.state == TrialState.PRUNED and status in ("duplicate", "over budget"):
        return f"{head} skipped: {status}"
    if trial.state == TrialState.PRUNED:
        return f"{head} rejected in {1e3 * seconds:.0f} ms: {found.rejected} | {pattern}"
    if trial.state == TrialState.FAIL:
        return f"{head} failed ({status or 'error'}) | {pattern}"
    accuracy, cost = trial.values
    feasible = all(v <= 0 for v in trial.constraints.values())
    reused = " (reused)" if found.reused_from is not None else ""
    return (f"{head} accuracy {accuracy:.3f} cost {cost:.3f}x density {found.density or 0:.3f} "
            f"mixing {found.mixing_depth}{'' if feasible else ' (infeasible)'} "
            f"in {seconds:.0f} s{reused} | {pattern}")
