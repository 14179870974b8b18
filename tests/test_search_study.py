"""A study bound to its definition, and finished only when its budget and references are accounted
for: in-process, on the tiny experiment, with the states a killed worker leaves crafted by hand."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from optuna.trial import TrialState
from searchconf import objects, tiny

from search import record
from search.accounting import account, counted
from search.app import run_search_mode
from search.config import KernelConfig, MQARConfig, SpaceConfig
from search.definition import DEFINITION, definition, differences, study_name
from search.errors import StudyMismatch
from search.report import write_report
from search.space import enqueue_params
from search.storage import make_storage
from search.study import open_study, run_search

# study.ask() with heartbeats on stands for a worker's trial here, as a killed worker leaves it
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed:UserWarning")


@pytest.fixture(autouse=True)
def cost_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path / "cost-cache"))


def names_of(trials):
    return [record.read(t).reference for t in trials if counted(t) and record.read(t).reference is not None]


def test_the_definition_leaves_out_what_does_not_change_a_score():
    task, space, kernel = MQARConfig(), SpaceConfig(name="s"), KernelConfig()
    base = definition(task, space, kernel, seed=0)
    same = definition(dataclasses.replace(task, n=999, train=dataclasses.replace(task.train, threads=2)),
                      dataclasses.replace(space, description="other words"),
                      dataclasses.replace(kernel, repeats=3, warmup=5), seed=0)
    assert same == base and study_name(same) == study_name(base)
    longer = definition(dataclasses.replace(task, train=dataclasses.replace(task.train, steps=800)), space,
                        kernel, seed=0)
    assert study_name(longer) != study_name(base)
    assert study_name(base).startswith("s-mqar-n8192-seed0-")
    assert differences(base, longer) == ["task.train.steps: 400 in the study, 800 here"]
    assert differences(base, definition(task, space, kernel, seed=1)) == ["seed: 0 in the study, 1 here"]


def test_each_space_of_a_sweep_gets_its_own_study(tmp_path):
    """The README's `-m space=fixed_window,window_global`: one study per job, each with its own trials
    and the references of its own space."""
    studies = {}
    for space in ("fixed_window", "window_global"):
        cfg = tiny(tmp_path, f"space={space}", "space.proxy.n=32", "space.proxy.block=8",
                   "space.target.n=1024", "space.density_budget=1.0")
        report = run_search_mode(cfg, tmp_path / space)
        studies[space] = report
        assert f"space {space}" in report.summary_md.read_text()
    stored = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/s.db")
    assert sorted(s.study_name.split("-")[0] for s in stored) == ["fixed_window", "window_global"]
    for summary in stored:
        study = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tmp_path}/s.db")
        space = study.user_attrs[DEFINITION]["space"]
        assert sorted(names_of(study.trials)) == sorted(space["references"])


def test_a_named_study_refuses_another_definition_and_says_how_they_differ(tmp_path):
    run_search(*objects(tiny(tmp_path, "search.study=mix", "search.n_trials=1", "search.references=false")),
               progress=False)
    other = tiny(tmp_path, "search.study=mix", "search.n_trials=1", "search.references=false",
                 "space=window_global", "space.proxy.n=32", "space.proxy.block=8", "space.target.n=1024")
    with pytest.raises(StudyMismatch) as error:
        run_search(*objects(other), progress=False)
    message = str(error.value)
    assert "study 'mix' in sqlite:///" in message and "was defined by other values than this run's" in message
    assert "space.name: fixed_window in the study, window_global here" in message
    assert "leave search.study unset" in message and "window_global-mqar-n1024-seed0-" in message
    same = tiny(tmp_path, "search.study=mix", "search.n_trials=1", "search.references=false")
    with pytest.raises(StudyMismatch, match="seed: 0 in the study, 1 here"):
        run_search(*objects(same), seed=1, progress=False)


def _opened(tmp_path, *overrides):
    """The tiny study opened as a first worker would, with nothing run yet."""
    task, space, kernel, settings = objects(tiny(tmp_path, "space.target.n=256", *overrides))  # fast cost
    defined = definition(task, space, kernel, seed=0)
    return (task, space, kernel, settings), optuna.create_study(
        study_name=study_name(defined), storage=make_storage(settings, study_name(defined)),
        directions=list(record.DIRECTIONS)), defined


def test_references_a_dead_creator_never_enqueued_are_completed(tmp_path):
    """The creating worker died after enqueueing one reference: the next run enqueues the rest."""
    (task, space, kernel, settings), study, defined = _opened(tmp_path)
    study.set_user_attr(DEFINITION, defined)
    first = next(iter(space.references))
    study.enqueue_trial(enqueue_params(space, first), user_attrs={record.REFERENCE: first})
    done = run_search(task, space, kernel, settings, progress=False)
    assert sorted(names_of(done.trials)) == sorted(space.references)  # each scored exactly once
    assert account(done.trials, settings.n_trials, space.references).finished


def test_a_reference_enqueued_twice_is_scored_once(tmp_path):
    """Two workers completed the set at once: the higher copy is pruned as a duplicate, uncounted."""
    (task, space, kernel, settings), study, defined = _opened(tmp_path)
    study.set_user_attr(DEFINITION, defined)
    for name in [*space.references, "dense_causal"]:
        study.enqueue_trial(enqueue_params(space, name), user_attrs={record.REFERENCE: name})
    done = run_search(task, space, kernel, settings, progress=False)
    assert sorted(names_of(done.trials)) == sorted(space.references)
    duplicates = [t for t in done.trials if record.read(t).status == "duplicate"]
    assert [t.state for t in duplicates] == [TrialState.PRUNED]
    assert sum(map(counted, done.trials)) == settings.n_trials


def test_a_reference_failed_on_a_fault_is_trained_by_the_next_run(tmp_path):
    """Trial 0 (dense causal) failed in an earlier run (a bad value, before values were checked):
    the next run, with the value fixed, trains it."""
    (task, space, kernel, settings), study, defined = _opened(tmp_path)
    study.set_user_attr(DEFINITION, defined)
    study.enqueue_trial({}, user_attrs={record.REFERENCE: "dense_causal"})
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)
    done = run_search(task, space, kernel, settings, progress=False)
    assert sorted(names_of(done.trials)) == sorted(space.references)
    assert account(done.trials, settings.n_trials, space.references).finished


@pytest.mark.parametrize("beat", [True, False], ids=["after-a-heartbeat", "before-its-first-heartbeat"])
def test_a_dead_workers_reference_is_retried_although_the_budget_is_spent(tmp_path, beat):
    """The issue's case: a worker was killed while training a reference, and a rerun at once finishes
    the budget before that trial is stale. The rerun waits for it, fails it once stale and trains
    its retry: no trial stays RUNNING and every reference is scored once."""
    (task, space, kernel, settings), study, _ = _opened(tmp_path, "search.heartbeat=1")
    storage = study._storage
    open_study(settings, space, definition(task, space, kernel, seed=0), study.study_name)  # references
    killed = study.ask()  # dense_causal, RUNNING, as a SIGKILL leaves it
    if beat:
        storage.record_heartbeat(killed._trial_id)
    done = run_search(task, space, kernel, settings, progress=False)
    trials = done.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[killed.number].state == TrialState.FAIL
    assert sorted(names_of(trials)) == sorted(space.references)
    assert account(trials, settings.n_trials, space.references).finished


def test_a_report_says_when_a_study_is_not_finished(tmp_path):
    """A trial RUNNING in a live worker (its heartbeat fresh): this worker ends without it, and its
    report does not call the study finished."""
    (task, space, kernel, settings), study, _ = _opened(tmp_path, "search.heartbeat=30", "search.n_trials=3")
    open_study(settings, space, definition(task, space, kernel, seed=0), study.study_name)
    alive = study.ask()
    study._storage.record_heartbeat(alive._trial_id)
    state = account(study.get_trials(), 3, space.references)
    assert not state.finished
    text = state.describe()
    assert text.startswith("NOT finished: 0 of 3 budgeted trials counted, 0 of 3 references scored")
    assert f"trial {alive.number} still RUNNING" in text
    summary = write_report(study, space, tmp_path / "report", task.name, account=state).summary_md.read_text()
    assert "- Study NOT finished: 0 of 3 budgeted trials counted" in summary


def test_screening_scores_every_trial_at_the_checkpoint_and_keeps_stopped_ones_off_the_front(tmp_path,
                                                                                            monkeypatch):
    """task.train.rungs: references score at each rung and train in full; a candidate the rule
    stops keeps its rung score, says fidelity "screen", and never stands on the front."""
    from search.objective import Objective
    from search.report import front_trials

    rule = Objective._promote

    def stop_every_candidate(self, trial, step, screened, cost, always=False):
        rule(self, trial, step, screened, cost, always)
        return always

    monkeypatch.setattr(Objective, "_promote", stop_every_candidate)
    task, space, kernel, settings = objects(tiny(tmp_path, "search.n_trials=5", "task.train.steps=8",
                                                 "task.train.rungs=[0.25,0.5]"))
    done = run_search(task, space, kernel, settings, progress=False)
    scored = [t for t in done.trials if record.read(t).status == "ok" and
              record.read(t).reused_from is None]
    references = [t for t in scored if record.read(t).reference is not None]
    candidates = [t for t in scored if record.read(t).reference is None]
    assert len(references) == len(space.references) and candidates
    assert all(record.read(t).fidelity == "full" and [s for s, _ in record.read(t).rungs] == [2, 4]
               for t in references)  # scored at both rungs, then trained in full
    assert all(record.read(t).fidelity == "screen" and [s for s, _ in record.read(t).rungs] == [2]
               for t in candidates)  # stopped at the first rung, with its score there
    front = front_trials(done.trials)
    assert front and not {t.number for t in front} & {t.number for t in candidates}


@pytest.mark.parametrize("step, screened, cost, promoted", [
    pytest.param(50, 0.50, 0.40, False, id="dominated-by-more-than-the-margin"),
    pytest.param(50, 0.57, 0.40, True, id="within-the-margin"),
    pytest.param(50, 0.50, 0.20, True, id="cheaper-than-every-earlier-trial"),
    pytest.param(100, 0.50, 0.40, True, id="no-earlier-trial-at-this-rung"),
])
def test_the_promotion_rule(step, screened, cost, promoted):
    """Stopped only when an earlier trial scored at the same rung at no more cost was better by
    promote_within."""
    from types import SimpleNamespace

    from search.objective import Objective

    study = optuna.create_study(directions=list(record.DIRECTIONS))
    study.add_trial(optuna.trial.create_trial(values=[0.7, 0.3],
                                              user_attrs={record.RECORD: {"rungs": [[50, 0.6]]}}))
    study.add_trial(optuna.trial.create_trial(values=[0.9, 0.9]))  # never screened: not a yardstick
    objective = SimpleNamespace(scorer=SimpleNamespace(task=MQARConfig()))  # promote_within 0.05
    trial = study.ask()
    assert Objective._promote(objective, trial, step, screened, cost) is promoted


def test_a_search_can_take_decode_cost_as_its_cost(tmp_path):
    """kernel.phase=decode: each candidate's cost is one decode step at target.n - 1 over the cache
    the pattern keeps, against dense decode."""
    task, space, kernel, settings = objects(tiny(tmp_path, "search.n_trials=3", "kernel.phase=decode"))
    done = run_search(task, space, kernel, settings, progress=False)
    costs = [record.read(t).cost for t in done.trials if record.read(t).status == "ok"]
    assert costs and all(c["phase"] == "decode" and c["context"] == space.target.n - 1 for c in costs)
    assert all(c["ratio_low"] <= c["ratio"] <= c["ratio_high"] for c in costs)  # the spread is kept


@pytest.mark.parametrize("overrides, message", [
    pytest.param(["kernel.phase=decoding"], "kernel.phase must be one of prefill, decode", id="phase"),
    pytest.param(["kernel.phase=decode", "kernel.backend=sdpa"],
                 "kernel.phase=decode times our decode kernel: kernel.backend must be kernel",
                 id="backend"),
    pytest.param(["kernel.phase=decode", "kernel.context=1024"],
                 "kernel.context = 1024 must be below space.target.n = 1024", id="context-past-n"),
    pytest.param(["kernel.context=5"], "kernel.context = 5 is the decode step's position",
                 id="context-prefill"),
])
def test_bad_decode_settings_are_refused_at_start_up(tmp_path, overrides, message):
    from search.errors import ConfigError
    from search.scorer import check_search

    task, space, kernel, settings = objects(tiny(tmp_path, *overrides))
    with pytest.raises(ConfigError) as error:
        check_search(task, space, kernel, settings, seed=0)
    assert message in str(error.value)
