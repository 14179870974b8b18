"""Issue 25: one scorer chosen from the task, candidates adapted from a trained dense proxy, the
artifact store that keeps its weights and reusable scores, the initial design, and the bad inputs
each refused at start-up naming its key."""

from __future__ import annotations

import dataclasses
import functools

import pytest
from searchconf import objects, tiny

import search.scorer
from search import record
from search.config import ParamSpec, ProxyConfig, SpaceConfig
from search.errors import ConfigError
from search.objective import fits
from search.scorer import Adapt, Scratch, check_search, make_scorer
from search.space import design
from search.study import run_search

DENSE = ("task.train.init=dense",)


def _dense_trainings(monkeypatch) -> list:
    """Every training of the dense proxy from scratch (``_run`` asked to keep the model)."""
    calls, run = [], search.scorer._run

    def spy(*args, **kwargs):
        if kwargs.get("keep") is not None:
            calls.append(args[0])
        return run(*args, **kwargs)

    monkeypatch.setattr("search.scorer._run", spy)
    return calls


def test_the_scorer_is_chosen_once_from_the_task(tmp_path):
    for overrides, kind in (((), Scratch), (DENSE, Adapt)):
        task, space, kernel, settings = objects(tiny(tmp_path, *overrides))
        assert type(check_search(task, space, kernel, settings, seed=0)) is kind
    from search.calibrate import CalibrateConfig

    with pytest.raises(ConfigError, match=r"task\.model must be a save_pretrained directory"):
        make_scorer(CalibrateConfig(model=str(tmp_path)), space)  # Calibrate's own checks, at start-up


def test_adaptation_trains_the_dense_proxy_once_and_every_study_of_its_definition_reuses_it(tmp_path,
                                                                                          monkeypatch):
    trainings = _dense_trainings(monkeypatch)
    first = run_search(*objects(tiny(tmp_path, *DENSE, "search.n_trials=5")), seed=0, progress=False)
    assert len(trainings) == 1 and trainings[0].expression(0, 0) == "causal"
    stored = sorted(p.name for p in (tmp_path / "artifacts").iterdir())
    assert any(n.startswith("dense-") and n.endswith(".pt") for n in stored), stored
    scored = [record.read(t) for t in first.trials if t.state.name == "COMPLETE"]
    assert scored and all(r.scorer == "adapt" for r in scored)
    # another space, the same task, proxy and seed: the dense proxy and the shared references' scores
    second = run_search(*objects(tiny(tmp_path, *DENSE, "space=window_global", "search.n_trials=3")),
                        seed=0, progress=False)
    assert len(trainings) == 1  # loaded from the store, not trained again
    dense = next(record.read(t) for t in second.trials if record.read(t).reference == "dense_causal")
    assert dense.reused_from == "store"
    theirs = next(t for t in first.trials if record.read(t).reference == "dense_causal")
    ours = next(t for t in second.trials if record.read(t).reference == "dense_causal")
    assert ours.values[0] == theirs.values[0]


def test_adapting_zero_steps_scores_the_dense_proxy_zero_shot(tmp_path):
    """K = 0: exp(-KL) against the dense proxy, so dense causal itself retains exactly 1."""
    study = run_search(*objects(tiny(tmp_path, *DENSE, "task.train.adapt_steps=0", "search.n_trials=4")),
                       seed=0, progress=False)
    scores = {record.read(t).reference: t.values[0] for t in study.trials if t.state.name == "COMPLETE"}
    assert scores["dense_causal"] == 1.0
    assert all(0 < score <= 1.0 for score in scores.values())
    assert record.read(next(t for t in study.trials if t.state.name == "COMPLETE")).chance is None


def test_an_adapted_candidate_trains_k_steps_from_the_dense_weights(tmp_path):
    task, space, kernel, settings = objects(tiny(tmp_path, *DENSE, "task.train.adapt_steps=3"))
    scorer = check_search(task, space, kernel, settings, seed=0)
    scorer.prepare(None)
    import patternc

    cp = patternc.compile(patternc.Stack("causal & window(8)", layers=space.proxy.layers,
                                         heads=space.proxy.heads), space.proxy.n, block=space.proxy.block)
    result = scorer.score(cp)
    assert result.steps == 3 and scorer.fidelity(result) == "full" and result.status == "ok"
    dense = scorer.score(patternc.compile(patternc.Stack("causal", layers=space.proxy.layers,
                                                         heads=space.proxy.heads), space.proxy.n))
    # the dense proxy after 3 more steps scores about what it scored trained (not a fresh model)
    assert abs(dense.score - scorer.dense_result.score) <= 0.35


@pytest.mark.parametrize("overrides, message", [
    pytest.param((*DENSE, "task.train.adapt_steps=9"),
                 r"task.train.adapt_steps = 9 must be in \[0, task.train.steps = 8\]", id="k-past-steps"),
    pytest.param((*DENSE, "task.train.adapt_steps=-1"), "task.train.adapt_steps must be an integer >= 0",
                 id="k-negative"),
    pytest.param((*DENSE, "~space.references.dense_causal"),
                 "task.train.init=dense adapts every candidate from the dense reference, but space "
                 "fixed_window lists none in space.references", id="dense-without-a-dense-reference"),
    pytest.param(("task.train.promote_within=-0.5",), "task.train.promote_within must be a number in "
                 r"\[0, 1\] \(below 0 a rung promotes nothing", id="rungs-promote-nothing"),
    pytest.param(("task.train.rungs=[0.5,0.5]",), "task.train.rungs must be a list of increasing fractions",
                 id="rungs-repeat"),
    pytest.param((*DENSE, "search.artifacts=/proc/no/such/place"),
                 "search.artifacts = '/proc/no/such/place' cannot be written", id="artifacts-unwritable"),
])
def test_bad_adaptation_settings_are_refused_at_start_up(tmp_path, overrides, message):
    task, space, kernel, settings = objects(tiny(tmp_path, *overrides))
    with pytest.raises(ConfigError, match=message):
        run_search(task, space, kernel, settings, progress=False)
    assert not (tmp_path / "s.db").exists()  # refused before the study is opened


def test_the_initial_design_covers_every_layer_choice_and_each_parameter_s_ends():
    space = SpaceConfig(template="causal & (window(ceil($w * n)) | fixed(n // $m, 1))",
                        layer_choices=["template", "causal"], proxy=ProxyConfig(layers=2),
                        params={"w": ParamSpec(type="float", low=0.01, high=0.25, log=True),
                                "m": ParamSpec(type="categorical", choices=[2, 4, 8]),
                                "k": ParamSpec(type="int", low=1, high=9)})
    points = design(space)
    assert {p["w"] for p in points} == {0.01, 0.25} and {p["k"] for p in points} == {1, 9}
    assert {p["m"] for p in points} == {2, 4, 8}
    for layer in ("layer0", "layer1"):
        assert {p[layer] for p in points} == {"template", "causal"}
    assert {(p["layer0"], p["layer1"]) for p in points} >= {("template", "template"), ("causal", "template"),
                                                            ("template", "causal")}


def test_the_design_gives_each_structure_the_nearest_values_within_the_budgets_and_drops_what_none_fit(
        tmp_path):
    # the default space: a dense first layer fits its 0.7 density budget only with the template's
    # sparsest values (0.62 of dense causal at w = f = 0.01, m = 8), not at the high ends it alternates to
    _, space, _, _ = objects(tiny(tmp_path, "space=fixed_window"))
    space = dataclasses.replace(space, target=dataclasses.replace(space.target, n=8192, block=128),
                                density_budget=0.7)
    unfiltered = design(space)
    dense_first = next(p for p in unfiltered if (p["layer0"], p["layer1"]) == ("causal", "template"))
    assert not fits(space, dense_first)
    points = design(space, fits=functools.partial(fits, space))
    assert all(fits(space, p) for p in points)
    structures = [(p["layer0"], p["layer1"]) for p in points]
    assert ("causal", "template") in structures
    assert ("causal", "causal") not in structures  # dense everywhere: no values make it fit
    kept = points[structures.index(("causal", "template"))]
    assert kept["m"] == dense_first["m"]  # the categorical kept; the numbers moved to fit
    assert (kept["w"], kept["f"]) == (0.01, 0.01)


def test_a_search_scores_its_initial_design_first_and_each_design_point_is_scored(tmp_path):
    task, space, kernel, settings = objects(tiny(tmp_path, "search.n_trials=6", "search.references=false"))
    study = run_search(task, space, kernel, settings, progress=False)
    expected = design(space, fits=functools.partial(fits, space))[:6]
    trials = sorted(study.trials, key=lambda t: t.number)[:len(expected)]
    assert [t.params for t in trials] == expected
    assert all(record.read(t).status == "ok" for t in trials)  # none rejected by a budget
    # each trial's findings are one record, written once (no attribute per finding)
    assert all(set(t.user_attrs) == {record.RECORD} for t in study.trials)
    assert all(record.read(t).status in ("ok", "rejected") for t in study.trials)
