"""Many workers on one study, launched by Hydra (the ``patternc_workers`` sweeper).

``patternc-search -m hydra/launcher=submitit_slurm search.storage=postgresql+psycopg2://... search.workers=8``
is one study and 8 jobs: the sweeper adds ``search.worker=range(8)`` (unless the command sweeps
``search.worker`` itself), so each job is a worker with its own run directory
(``<hydra.sweep.dir>/<job number>/``) and its own seed stream, all spending one budget. Any launcher
works: ``submitit_slurm`` on a cluster, ``submitit_local`` or ``joblib`` on one machine, Hydra's basic
launcher (one job after another).

Before any job starts, every job's config is composed and checked (``search.scorer.check_search``; devices
are left to the jobs, on their own nodes): a bad value, or an embedded sqlite store shared by
several workers, ends the command with ``patternc-search: error: ...`` and status 2.

When the launcher returns, the report of each shared study is written once, into
``<hydra.sweep.dir>/<study>/``, with whether the study is finished. A worker that the launcher
reports failed (killed, pre-empted) leaves its trial to the others' heartbeat check; the sweeper
then waits until no trial of the study runs before it writes the report, and exits 0 when the study
is finished all the same, 1 when it is not (its summary says what is missing; rerun the command,
or any worker, to finish it).
"""

from __future__ import annotations

import logging
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from search.config import config_objects
from search.definition import definition, differences, study_name
from search.errors import SearchError, StudyMismatch
from search.scorer import check_search
from search.storage import fail_stale, url_of

__all__ = ["job_configs", "sweep", "with_workers"]

log = logging.getLogger("patternc.search")


def with_workers(config: DictConfig, arguments: list[str]) -> list[str]:
    """``arguments`` plus ``search.worker=range(N)`` when the config asks for N > 1 workers in a search
    and no argument sets ``search.worker`` already."""
    if config.get("mode") != "search" or config.search.workers <= 1:
        return arguments
    if any(arg.split("=", 1)[0].lstrip("+~") == "search.worker" for arg in arguments):
        return arguments
    return [*arguments, f"search.worker=range({config.search.workers})"]


def job_configs(sweeper, arguments: list[str]) -> Iterator[DictConfig]:
    """The composed config of every job the arguments sweep, as the launcher will compose them, one
    at a time: a fault in the first job is found before the others are composed (tenths of a
    second each)."""
    loader = sweeper.hydra_context.config_loader
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    for batch in sweeper.split_arguments(overrides, None):
        for job in batch:
            yield loader.load_sweep_config(sweeper.config, list(job))


def _shared_studies(configs: Iterable[DictConfig]) -> dict[str, DictConfig]:
    """Check every search job, and that jobs naming one study define it alike; the studies that
    several workers share, by storage and name (one job's config each)."""
    shared: dict[str, DictConfig] = {}
    first: dict[str, tuple[int, dict]] = {}  # study -> (job, definition) of the first job naming it
    for job, cfg in enumerate(configs):
        if cfg.mode != "search":
            continue
        task, space, kernel, settings = config_objects(cfg)
        check_search(task, space, kernel, settings, cfg.seed, devices=False)
        defined = definition(task, space, kernel, cfg.seed)
        name = settings.study or study_name(defined)
        key = f"{url_of(settings, name)} {name}"
        other, theirs = first.setdefault(key, (job, defined))
        if theirs != defined:
            said = differences(theirs, defined, labels=(f"in job {other}", f"in job {job}"))
            raise StudyMismatch(f"jobs {other} and {job} of this sweep both use study {name!r} but define it "
                                f"differently ({'; '.join(said)}): leave search.study unset, so that each "
                                f"definition gets its own study")
        if settings.workers > 1:
            shared.setdefault(key, cfg)
    return shared


def _settle(study: optuna.Study, heartbeat: int) -> None:
    """Wait until no trial runs: live workers finish theirs, a dead one's goes stale and is failed
    (and its retry enqueued for the workers still running)."""
    while True:
        fail_stale(study)
        running = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
        if not running:
            return
        log.warning("waiting for trial %s, still running in other workers", ", ".join(map(str, running)))
        time.sleep(heartbeat)


def sweep(sweeper, arguments: list[str], launch: Callable[[list[str]], Any]) -> Any:
    """The sweeper's ``sweep``: expand the workers, check every job, launch, report each shared study."""
    from search.app import report_study
    from search.study import load_existing, study_account

    arguments = with_workers(sweeper.config, arguments)
    try:
        shared = _shared_studies(job_configs(sweeper, arguments))
    except (SearchError, ValueError, TypeError) as error:
        print(f"patternc-search: error: {error}", file=sys.stderr)
        sys.exit(2)
    failure = None
    try:
        returns = launch(arguments)
    except Exception as error:  # a job that failed or never returned (killed, pre-empted)
        failure, returns = error, []
    unfinished = []
    for cfg in shared.values():
        task, space, kernel, settings = config_objects(cfg)
        study = load_existing(settings, definition(task, space, kernel, cfg.seed))
        if failure is not None:
            _settle(study, settings.heartbeat)
        out_dir = pathlib.Path(sweeper.config.hydra.sweep.dir) / study.study_name
        report_study(study, cfg, out_dir)
        state = study_account(study, settings, space)
        print(f"study {study.study_name} ({settings.workers} workers): {state.describe()}; "
              f"report: {out_dir}/summary.md")
        if not state.finished:
            unfinished.append(study.study_name)
    if failure is not None:
        said = f"a worker job failed or was killed ({type(failure).__name__}: {str(failure)[:300]})"
        if unfinished or not shared:
            print(f"patternc-search: error: {said}; not finished: "
                  f"{', '.join(unfinished) or 'no shared study'} (rerun the same command to finish it)",
                  file=sys.stderr)
            sys.exit(1)
        print(f"patternc-search: warning: {said}; the other workers retried its trial and finished the study",
              file=sys.stderr)
    return returns
