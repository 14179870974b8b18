"""patternc-search as separate processes: a worker killed with SIGKILL mid-study and a rerun that
resumes it; two workers sharing one study on a real PostgreSQL server.

Each search is a real ``python -m search experiment=tiny`` process (3 s of imports, then trials of a
second or two), so these tests check what a user gets, storage and heartbeats included. Every wait
has a deadline and every child is killed in a ``finally``: a stuck search fails the test, never
hangs it.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from hydra import compose, initialize_config_dir
from optuna.trial import FrozenTrial, TrialState

from search import record
from search.accounting import counted
from search.app import CONF

DEADLINE = 600  # seconds for one search process: generous, for a slow 2-core machine shared with others
HEARTBEAT = 1  # search.heartbeat in the resume test: a killed trial is stale after 2 s
POSTGRES = os.environ.get("PATTERNC_TEST_POSTGRES")  # e.g. postgresql+psycopg2://patternc:patternc@localhost/patternc
TRIAL_LINE = re.compile(r"^trial\s+(\d+) \(", re.MULTILINE)  # one line per finished trial (search.study)


def reference_names() -> set[str]:
    """The classic patterns the tiny search enqueues (its space's ``references``)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return set(compose("config", overrides=["experiment=tiny"]).space.references)


def start(tmp_path, name: str, *overrides: str) -> subprocess.Popen:
    """``python -m search experiment=tiny ...`` in its own process group, output to ``<name>.out/.err``
    (files, not pipes: nothing blocks while the test polls) and its report in ``<name>/``."""
    env = {**os.environ, "PATTERNC_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "search", "experiment=tiny", *overrides,
               f"hydra.run.dir={tmp_path / name}"]
    with open(tmp_path / f"{name}.out", "w") as out, open(tmp_path / f"{name}.err", "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp_path,
                                env=env, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the search's process group (a no-op once it has exited and been reaped)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def tail(tmp_path, name: str) -> str:
    return (tmp_path / f"{name}.err").read_text()[-3000:]


def finish(proc: subprocess.Popen, tmp_path, name: str, deadline: float) -> str:
    """Wait for a search to exit 0 before ``deadline`` (time.monotonic()); its stdout."""
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill(proc)
        pytest.fail(f"search {name} did not finish within {DEADLINE} s; stderr:\n{tail(tmp_path, name)}")
    assert proc.returncode == 0, f"search {name} exited {proc.returncode}; stderr:\n{tail(tmp_path, name)}"
    return (tmp_path / f"{name}.out").read_text()


def read_trials(storage: optuna.storages.RDBStorage | str, study: str) -> list[FrozenTrial]:
    """The study's trials. A URL opens a storage of its own, closed after the read: the tests below
    poll ten times a second while workers train, and an engine left to the garbage collector keeps
    its connection (PostgreSQL's 100 ran out while the workers trained their dense proxy)."""
    if not isinstance(storage, str):
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    opened = optuna.storages.RDBStorage(storage)
    try:
        return optuna.load_study(study_name=study, storage=opened).get_trials()
    finally:
        opened.engine.dispose()


def originals(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that are not heartbeat retries (RetryHeartbeatStaleTrialCallback marks those)."""
    return [t for t in trials if "failed_trial" not in t.system_attrs]


def assert_references_once(trials: list[FrozenTrial]) -> None:
    """Each classic pattern scored exactly once. Workers starting together may both enqueue one (any
    worker completes the set): the later copy must then be pruned as a duplicate, never trained."""
    references = [t for t in trials if record.read(t).reference is not None]
    scored = [record.read(t).reference for t in references if counted(t)]
    assert sorted(scored) == sorted(reference_names()), f"references scored: {scored}"
    for t in references:
        assert counted(t) or t.state == TrialState.FAIL or (
            t.state == TrialState.PRUNED and record.read(t).status == "duplicate"
            and record.read(t).accuracy is None), f"reference trial {t.number} ended {t.state.name}"


def sampled_params(trials: list[FrozenTrial]) -> list[tuple]:
    """The parameters of each sampled candidate (not a classic pattern, not a retry, not a trial
    refused before sampling because the budget was spent)."""
    return [tuple(sorted(t.params.items())) for t in originals(trials)
            if record.read(t).reference is None and t.params]


def test_a_search_killed_mid_trial_resumes_and_finishes_the_budget(tmp_path):
    """SIGKILL once the classic patterns are scored, while the first sampled candidate trains; the
    rerun keeps the scored trials, fails the stale one once its heartbeat is 2 s old, retries it with
    its parameters, samples new candidates and finishes the budget of 6."""
    url, study, budget = f"sqlite:///{tmp_path / 's.db'}", "resume", 6
    kill_after = len(reference_names())  # scored trials before the kill: the references, run first
    assert 2 <= kill_after <= budget - 2, "the tiny search should leave sampled trials on both sides"
    args = (f"search.n_trials={budget}", f"search.heartbeat={HEARTBEAT}", f"search.storage={url}",
            f"search.study={study}")
    first = start(tmp_path, "run1", *args)
    second = None
    try:
        # Poll read-only (the child creates the tables) until the references are scored and the next
        # trial runs. Between trials (nothing RUNNING) is a valid test of resuming too, if we miss it.
        deadline, storage = time.monotonic() + DEADLINE, None
        while True:
            if first.poll() is not None:
                pytest.fail(f"run1 exited {first.returncode} before it could be killed mid-study; "
                            f"stderr:\n{tail(tmp_path, 'run1')}")
            if time.monotonic() > deadline:
                pytest.fail(f"run1 scored fewer than {kill_after} trials in {DEADLINE} s; "
                            f"stderr:\n{tail(tmp_path, 'run1')}")
            try:
                if storage is None and (tmp_path / "s.db").exists():
                    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True,
                                                         skip_table_creation=True)
                states = [t.state for t in read_trials(storage, study)] if storage else []
            except Exception:  # no study yet, or the child holds the database's lock: poll again
                states = []
            complete = states.count(TrialState.COMPLETE)
            if (complete >= kill_after and TrialState.RUNNING in states) or complete >= budget - 2:
                break
            time.sleep(0.05)
        kill(first)

        before = read_trials(storage, study)
        done = {t.number: (t.params, t.values, t.user_attrs)
                for t in before if t.state == TrialState.COMPLETE}
        killed = [t for t in before if t.state == TrialState.RUNNING]
        assert len(done) >= kill_after and len(killed) <= 1, [(t.number, t.state) for t in before]
        time.sleep(2 * HEARTBEAT + 1)  # past the grace period: the killed trial's heartbeat is stale

        second = start(tmp_path, "run2", *args)
        finish(second, tmp_path, "run2", time.monotonic() + DEADLINE)
    finally:
        kill(first)
        if second is not None:
            kill(second)

    after = read_trials(url, study)
    by_number = {t.number: t for t in after}
    for number, (params, values, attrs) in done.items():
        kept = by_number[number]
        assert (kept.state, kept.params, kept.values, kept.user_attrs) == (
            TrialState.COMPLETE, params, values, attrs), f"trial {number} changed by the rerun"
    assert budget <= sum(map(counted, after)) <= budget + 1
    assert not [t.number for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    sampled = sampled_params(after)  # run2 must not redraw run1's candidates
    assert len(sampled) == len(set(sampled)), f"a candidate was sampled twice: {sorted(sampled)}"
    for stale in killed:  # failed by run2's heartbeat check, retried once with its parameters
        assert by_number[stale.number].state == TrialState.FAIL
        retries = [t for t in after if t.system_attrs.get("failed_trial") == stale.number]
        assert len(retries) == 1, f"trial {stale.number} retried {len(retries)} times"
        retry = retries[0]
        assert retry.system_attrs["retry_history"] == [stale.number]
        assert {key: retry.params.get(key) for key in stale.params} == stale.params
        assert record.read(retry).reference == record.read(stale).reference
        assert counted(retry), f"the retry of trial {stale.number} ended {retry.state}"
    assert_references_once(after)  # run2 resumed the study: it did not enqueue the classics again
    for name in ("summary.md", "trials.csv", "pareto.png"):
        assert (tmp_path / "run2" / name).stat().st_size > 0, f"run2 left no {name}"


@pytest.mark.skipif(not POSTGRES, reason="set PATTERNC_TEST_POSTGRES to a PostgreSQL URL, e.g. "
                    "postgresql+psycopg2://patternc:patternc@localhost:5432/patternc (.ci/run does)")
def test_two_workers_share_one_study_on_postgresql(tmp_path):
    """Two workers started together on one study: the budget of 8 is spent once (a trial over at
    most: each worker checks it before a trial), each trial is run by exactly one worker, no
    candidate is sampled twice and each classic pattern is trained once."""
    study, budget = f"workers-{uuid.uuid4().hex[:12]}", 8
    args = (f"search.n_trials={budget}", f"search.storage={POSTGRES}", f"search.study={study}")
    workers = {}
    try:
        for name in ("worker1", "worker2"):
            workers[name] = start(tmp_path, name, *args)
        deadline = time.monotonic() + DEADLINE
        printed = {name: finish(proc, tmp_path, name, deadline) for name, proc in workers.items()}
        trials = read_trials(POSTGRES, study)
    finally:
        for proc in workers.values():
            kill(proc)
        with contextlib.suppress(KeyError):  # KeyError: neither worker got as far as creating it
            optuna.delete_study(study_name=study, storage=POSTGRES)

    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and set(numbers) == set(range(len(numbers)))
    assert budget <= sum(map(counted, trials)) <= budget + 1
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    sampled = sampled_params(trials)
    assert len(sampled) == len(set(sampled)), f"a candidate was sampled twice: {sorted(sampled)}"
    assert_references_once(trials)

    # Each worker logs one line per trial it ran: together every trial, each by one worker only.
    ran = {name: {int(n) for n in TRIAL_LINE.findall(out)} for name, out in printed.items()}
    assert not ran["worker1"] & ran["worker2"], f"trials run by both workers: {ran}"
    assert ran["worker1"] | ran["worker2"] == set(numbers), f"trials by worker: {ran}"
    scored = {t.number for t in trials if counted(t)}
    for name, numbers_run in ran.items():
        assert numbers_run & scored, f"{name} ran no counted trial: {ran}"


def sweep(tmp_path, *overrides: str) -> subprocess.Popen:
    """``patternc-search -m experiment=tiny ...`` (a multirun) into ``tmp_path/sweep``, output to files."""
    command = [sys.executable, "-m", "search", "-m", "experiment=tiny", *overrides,
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**os.environ, "PATTERNC_CACHE_DIR": str(tmp_path / "cache")}
    with open(tmp_path / "sweep.out", "w") as out, open(tmp_path / "sweep.err", "w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp_path,
                                env=env, start_new_session=True)


def test_sqlite_shared_by_several_workers_is_refused_before_any_job_starts(tmp_path):
    proc = sweep(tmp_path, "search.workers=3", "hydra/launcher=joblib")
    finish_code = proc.wait(timeout=DEADLINE)
    err = (tmp_path / "sweep.err").read_text()
    assert finish_code == 2 and "patternc-search: error: search.workers = 3 share one study" in err, err
    assert "give a server URL, search.storage=postgresql" in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()  # no job was launched


def test_jobs_that_name_one_study_but_define_it_differently_are_refused_before_any_starts(tmp_path):
    """The issue's sweep: two spaces under one explicit study name; refused, naming the difference."""
    proc = sweep(tmp_path, "space=fixed_window,window_global", "search.study=mix")
    code, err = proc.wait(timeout=DEADLINE), (tmp_path / "sweep.err").read_text()
    assert code == 2 and "jobs 0 and 1 of this sweep both use study 'mix' but define it differently" in err
    assert "space.name: fixed_window in job 0, window_global in job 1" in err and "Traceback" not in err
    assert not (tmp_path / "sweep").exists()


def assert_accounted(trials: list[FrozenTrial], budget: int, workers: int) -> None:
    """Every trial by one worker, none RUNNING or WAITING, no candidate twice, each classic once."""
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and set(numbers) == set(range(len(numbers)))
    assert budget <= sum(map(counted, trials)) <= budget + workers - 1
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    sampled = sampled_params(trials)
    assert len(sampled) == len(set(sampled)), f"a candidate was sampled twice: {sorted(sampled)}"
    assert_references_once(trials)


@pytest.mark.skipif(not POSTGRES, reason="set PATTERNC_TEST_POSTGRES to a PostgreSQL URL (.ci/run does)")
@pytest.mark.parametrize("launcher, workers", [("submitit_local", 3), ("joblib", 2)])
def test_workers_through_a_launcher_share_one_study(tmp_path, launcher, workers):
    """search.workers=N with a Hydra launcher: N jobs, each its own run directory and worker index,
    one budget spent once, and one report of the whole study that covers every trial."""
    study, budget = f"launched-{uuid.uuid4().hex[:12]}", 5
    proc = sweep(tmp_path, f"hydra/launcher={launcher}", f"search.workers={workers}",
                 f"search.storage={POSTGRES}", f"search.study={study}", f"search.n_trials={budget}")
    try:
        finish(proc, tmp_path, "sweep", time.monotonic() + DEADLINE)
        trials = read_trials(POSTGRES, study)
    finally:
        kill(proc)
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=POSTGRES)
    assert_accounted(trials, budget, workers)
    assert {record.read(t).worker["index"] for t in trials if counted(t)} <= set(range(workers))
    for job in range(workers):  # each worker its own run directory, with its config
        overrides = (tmp_path / "sweep" / str(job) / ".hydra" / "overrides.yaml").read_text()
        assert f"search.worker={job}" in overrides
    report = tmp_path / "sweep" / study
    with open(report / "trials.csv") as f:
        assert sorted(int(row["number"]) for row in csv.DictReader(f)) == [t.number for t in trials]
    assert "- Study finished:" in (report / "summary.md").read_text()


@pytest.mark.skipif(not POSTGRES, reason="set PATTERNC_TEST_POSTGRES to a PostgreSQL URL (.ci/run does)")
def test_a_preempted_worker_leaves_its_trial_to_the_heartbeat_retry(tmp_path):
    """Through submitit_local, worker 1 is pre-empted mid-trial as a scheduler does it (SIGTERM, which
    submitit logs and ignores, then SIGKILL): worker 0 fails the stale trial, retries it and
    finishes the study; the sweeper says a worker was killed, reports the study finished, exits 0."""
    study, budget = f"preempted-{uuid.uuid4().hex[:12]}", 5
    proc = sweep(tmp_path, "hydra/launcher=submitit_local", "search.workers=2", f"search.storage={POSTGRES}",
                 f"search.study={study}", f"search.n_trials={budget}", f"search.heartbeat={HEARTBEAT}",
                 "task.train.steps=150", "task.train.init=scratch")  # trials long enough to pre-empt one
    try:
        deadline, victim = time.monotonic() + DEADLINE, None
        while victim is None:
            assert proc.poll() is None and time.monotonic() < deadline, tail(tmp_path, "sweep")
            with contextlib.suppress(Exception):  # no study yet
                victim = next((t for t in read_trials(POSTGRES, study) if t.state == TrialState.RUNNING
                               and (record.read(t).worker or {}).get("index") == 1), None)
            time.sleep(0.1)
        pid = record.read(victim).worker["pid"]
        os.kill(pid, signal.SIGTERM)
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        finish(proc, tmp_path, "sweep", deadline)
        trials = read_trials(POSTGRES, study)
    finally:
        kill(proc)
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=POSTGRES)
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and counted(retries[0]) and record.read(retries[0]).worker["index"] == 0
    assert_accounted(trials, budget, 2)
    assert "a worker job failed or was killed" in tail(tmp_path, "sweep")
    assert "- Study finished:" in (tmp_path / "sweep" / study / "summary.md").read_text()
    assert "Bypassing signal SIGTERM" in "".join(
        p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.err"))
