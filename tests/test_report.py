"""The outputs of a search run, on synthetic studies whose trials carry what the objective records."""

from __future__ import annotations

import csv

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

import patternc
from search import record as R
from search.config import SpaceConfig, TargetConfig
from search.pareto import dominated_pairs, dominates, pareto_front
from search.report import front_trials, pareto_figure, write_report

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = SpaceConfig(name="window_global", target=TargetConfig(layers=2, heads=2, n=1024, block=128),  # tiny n
                    density_budget=0.5)
MAX, MIN = "maximize", "minimize"
BUCKETS = ("d2-16", "d16-48", "d48-128")  # in distance order, which must survive into the CSV
DISTS = {"w": IntDistribution(4, 1024, log=True), "g": IntDistribution(0, 64)}


def _trial(expr: str, acc: float | None = None, cost: float | None = None, *, reference: str | None = None,
           density: float = 0.2, mixing: int = 0, params: dict | None = None, rejected: str | None = None,
           state: TrialState = TrialState.COMPLETE, spread: tuple[float, float] | None = None
           ) -> optuna.trial.FrozenTrial:
    """A trial as the objective leaves it: constraints, attributes, and values only when scored."""
    attrs = {"stack": {"default": expr, "layers": 2, "heads": 2}, "expression": expr, "density": density,
             "mixing_depth": None if mixing else 2, "chance": 1 / 32,
             "durations": {"compile": 0.01, "reach": 0.002}}
    if reference:
        attrs[R.REFERENCE] = reference
    if rejected:
        attrs.update({"status": "rejected", "rejected": rejected})
    elif state == TrialState.COMPLETE:
        buckets = dict(zip(BUCKETS, (1.0, acc, acc / 2), strict=True))
        attrs.update({"status": "ok", "accuracy": acc, "buckets": buckets,
                      "cost": {"ratio": cost, "seconds": cost * 0.01, "baseline_seconds": 0.01,
                               "backend": "reference", "n": 1024, "dtype": "float32", "device": "cpu",
                               **({"ratio_low": spread[0], "ratio_high": spread[1]} if spread else {})},
                      "durations": {"compile": 0.01, "reach": 0.002, "cost": 0.4, "train": 3.0}})
    params = params or {}
    return optuna.trial.create_trial(
        state=state, values=None if acc is None else [acc, cost], params=params,
        distributions={k: DISTS[k] for k in params}, user_attrs=attrs,
        constraints={"density": density - SPACE.density_budget, "mixing": float(mixing)})


def _study(*trials) -> optuna.Study:
    study = optuna.create_study(directions=list(R.DIRECTIONS), study_name="test")
    for t in trials:
        study.add_trial(t)
    return study


TRIALS = [  # number: what it is
    _trial("causal", 0.95, 1.0, reference="dense_causal", density=1.0),  # 0: infeasible reference
    _trial("causal & window(128)", 0.60, 0.30, reference="sliding_window", density=0.25),  # 1: on front
    _trial("causal & (window(128) | global(16))", 0.80, 0.40, reference="longformer", density=0.3),  # 2
    _trial("causal & (window(64) | global(32))", 0.85, 0.35, params={"w": 64, "g": 32}),  # 3: beats 2
    _trial("causal & window(32)", 0.45, 0.12, params={"w": 32}, density=0.1),  # 4: cheapest
    _trial("causal & (window(64) | stride(64))", 0.70, 0.50, params={"w": 64}),  # 5: dominated by 3
    _trial("causal & (window(256) | global(16))", 0.94, 0.48, params={"w": 256, "g": 16}, density=0.45),  # 6
    _trial("causal & window(512)", params={"w": 512}, density=0.60, state=TrialState.PRUNED,
           rejected="density 0.60 exceeds the budget 0.50"),  # 7
    _trial("causal & window(600)", params={"w": 600}, density=0.70, state=TrialState.PRUNED,
           rejected="density 0.70 exceeds the budget 0.50"),  # 8
    _trial("causal & window(4)", params={"w": 4}, density=0.05, mixing=1, state=TrialState.PRUNED,
           rejected="does not mix within 2 layers at n=128"),  # 9
    _trial("causal & window(8)", params={"w": 8}, state=TrialState.FAIL),  # 10
    _trial("causal & window(16)", params={"w": 16}, state=TrialState.RUNNING),  # 11
]
FRONT = [4, 1, 3, 6]  # by cost


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return write_report(_study(*TRIALS), SPACE, tmp_path_factory.mktemp("run"), "mqar")


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- the front -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "directions", "expected"), [
    pytest.param((0.9, 0.2), (0.8, 0.2), (MAX, MIN), True, id="better-accuracy-same-cost"),
    pytest.param((0.9, 0.2), (0.9, 0.3), (MAX, MIN), True, id="same-accuracy-cheaper"),
    pytest.param((0.9, 0.2), (0.9, 0.2), (MAX, MIN), False, id="identical"),
    pytest.param((0.9, 0.3), (0.8, 0.2), (MAX, MIN), False, id="trade-off"),
    pytest.param((0.8, 0.2), (0.9, 0.3), (MIN, MIN), True, id="both-minimized"),
    pytest.param((1, 1, 1), (1, 1, 0), (MAX, MAX, MAX), True, id="three-objectives"),
])
def test_dominates(a, b, directions, expected):
    assert dominates(a, b, directions) is expected


@pytest.mark.parametrize(("points", "directions", "message"), [
    pytest.param([(1.0, float("nan"))], (MAX, MIN), "NaN", id="nan"),
    pytest.param([(1.0, 2.0)], (MAX,), "1 directions", id="too-few-directions"),
    pytest.param([(1.0, 2.0)], (MAX, "up"), "'up'", id="bad-direction"),
    pytest.param([(1.0, 2.0), (1.0,)], (MAX, MIN), "same number", id="ragged"),
])
def test_pareto_front_refuses(points, directions, message):
    with pytest.raises(ValueError, match=message):
        pareto_front(points, directions)


def test_identical_points_are_both_on_the_front():
    assert pareto_front([(0.5, 0.5), (0.5, 0.5), (0.4, 0.6)], (MAX, MIN)) == [0, 1]
    assert pareto_front([], (MAX, MIN)) == []


@settings(max_examples=200, deadline=None)
@given(data=st.data(), dims=st.integers(1, 3), n=st.integers(0, 30))
def test_front_is_exactly_the_undominated_points(data, dims, n):
    # Small integer coordinates, so that ties and duplicate points are common.
    points = data.draw(st.lists(st.tuples(*[st.integers(0, 5)] * dims), min_size=n, max_size=n))
    directions = data.draw(st.tuples(*[st.sampled_from([MAX, MIN])] * dims))
    front = pareto_front(points, directions)
    assert front == sorted(set(front))
    for i in front:  # no front member is dominated, by anything
        assert not any(dominates(p, points[i], directions) for p in points)
    for j in set(range(n)) - set(front):  # everything else is dominated by a front member
        assert any(dominates(points[i], points[j], directions) for i in front)
    off = [points[j] for j in range(n) if j not in front]
    beaten = {j for _, j in dominated_pairs([points[i] for i in front], off, directions)}
    assert beaten == set(range(len(off)))


# ---- the report ----------------------------------------------------------------------------------


def test_front_of_the_study(report):
    numbers = [t.number for t in report.front]
    assert numbers == FRONT
    feasible = [t for t in TRIALS[:7] if t.constraints["density"] <= 0]
    values = [tuple(t.values) for t in feasible]
    for t in report.front:  # no front member is dominated by any feasible trial
        assert not any(dominates(v, t.values, R.DIRECTIONS) for v in values)
    for v in values:  # every feasible trial is on the front or dominated by a member of it
        assert v in [tuple(t.values) for t in report.front] or any(
            dominates(t.values, v, R.DIRECTIONS) for t in report.front)
    assert 0 not in numbers, "the infeasible reference beats everything but must stay off the front"
    assert not {7, 8, 9, 10, 11} & set(numbers)
    assert report.dominated == {3: ["longformer"]}


def test_trials_csv(report):
    rows = _rows(report.trials_csv)
    assert len(rows) == len(TRIALS)
    columns = list(rows[0])
    assert columns == ["number", "state", "reference", "status", "expression", "param_g", "param_w",
                       "accuracy", "fidelity", "cost", "cost_low", "cost_high", "density", "mixing_depth",
                       "feasible",
                       "constraint_density", "constraint_mixing", "rejected_reason",
                       *(f"bucket_{b}" for b in BUCKETS),
                       "seconds_compile", "seconds_reach", "seconds_cost", "seconds_train",
                       "worker", "datetime_start", "datetime_complete"]
    assert [r["state"] for r in rows].count("PRUNED") == 3
    assert rows[0]["reference"] == "dense_causal" and rows[0]["feasible"] == "False"
    assert rows[9]["rejected_reason"].startswith("does not mix") and rows[9]["accuracy"] == ""
    assert rows[3]["param_g"] == "32" and rows[4]["param_g"] == ""
    assert float(rows[6]["cost"]) == 0.48 and rows[11]["datetime_complete"] == ""


def test_pareto_csv_and_markdown(report):
    rows = _rows(report.pareto_csv)
    assert [int(r["number"]) for r in rows] == FRONT
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["dominates"] for r in rows] == ["", "", "longformer", ""]
    assert rows[0]["yaml"] == "01_window_global_trial4.yaml"
    md = report.pareto_md.read_text()
    assert "| 1 | `causal & window(32)` | 0.450 | 0.12x dense |" in md
    assert r"`causal & (window(64) \| global(32))`" in md  # a bare | would split the table cell
    assert "(sliding_window)" in md
    assert "[01_window_global_trial4.yaml](patterns/01_window_global_trial4.yaml)" in md
    assert "- #3 (trial 3: 0.850, 0.35x) dominates longformer (0.800, 0.40x)" in md


def test_pattern_files_load_and_compile(report):
    yamls = [p for p in report.patterns if p.suffix == ".yaml"]
    layouts = [p for p in report.patterns if p.suffix == ".safetensors"]
    assert len(yamls) == len(layouts) == len(FRONT)
    for yaml_path, layout_path, trial in zip(yamls, layouts, report.front, strict=True):
        stack = patternc.load_stack(yaml_path)
        assert stack.default == R.read(trial).expression
        assert (stack.layers, stack.heads, stack.block) == (2, 2, (128, 128))
        assert f"trial {trial.number}" in stack.description and "accuracy" in stack.description
        cp = patternc.load(layout_path)
        assert (cp.n, cp.block, cp.layers, cp.heads) == (1024, (128, 128), 2, 2)
        fresh = patternc.compile(stack, SPACE.target.n)
        assert all((a == b).all() for a, b in zip(cp.layout(1, 1), fresh.layout(1, 1), strict=True))


def test_picture(report):
    data = report.pareto_png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_summary(report):
    text = report.summary_md.read_text()
    for fact in ["Trials: 12 (COMPLETE 7, FAIL 1, PRUNED 3, RUNNING 1)", "Status: ok 7, rejected 3",
                 "- Rejected before training: 3 (constraints violated: density 2, mixing 1); commonest",
                 "  - 2 x density 0.60 exceeds the budget 0.50 (numbers vary)",
                 "  - 1 x does not mix within 2 layers at n=128", "Pareto front: 4 patterns",
                 "Best accuracy: dense_causal `causal`: accuracy 0.950, cost 1.00x dense (infeasible).",
                 "Cheapest feasible within 0.02 of the best accuracy: trial 6", "dominates longformer",
                 "Elapsed:", "Cost is measured with reference (float32) on cpu at target.n=1024"]:
        assert fact in text, fact


@pytest.mark.parametrize("trials", [
    pytest.param([], id="no-trials"),
    pytest.param([TRIALS[0], TRIALS[7], TRIALS[10]], id="only-infeasible-rejected-failed"),
])
def test_no_feasible_trial(tmp_path, trials):
    report = write_report(_study(*trials), SPACE, tmp_path, "mqar")
    assert report.front == () and report.patterns == ()
    assert _rows(report.pareto_csv) == []
    assert report.pareto_csv.read_text().startswith("rank,number,state")
    assert "no Pareto front" in report.pareto_md.read_text()
    assert "No feasible trial has finished" in report.summary_md.read_text()
    assert len(_rows(report.trials_csv)) == len(trials)
    assert report.pareto_png.stat().st_size > 0


def test_identical_trials_are_both_on_the_front(tmp_path):
    write_report(_study(*TRIALS), SPACE, tmp_path, "mqar")  # four front members, eight files
    twins = [_trial(f"causal & window({w})", 0.7, 0.3, params={"w": w}) for w in (64, 65)]
    report = write_report(_study(*twins), SPACE, tmp_path, "mqar")
    assert [t.number for t in report.front] == [0, 1]
    assert len({p.name for p in report.patterns}) == 4  # the rank keeps the files apart
    # Rewritten in the same folder: the earlier report's pattern files are gone, not mixed in.
    assert sorted((tmp_path / "patterns").iterdir()) == sorted(report.patterns)


def test_wrong_directions_are_refused(tmp_path):
    study = optuna.create_study(directions=[MIN, MIN])
    with pytest.raises(ValueError, match="directions"):
        write_report(study, SPACE, tmp_path, "mqar")


def test_costs_spanning_decades_use_a_log_axis(tmp_path):
    # Exercise the log-axis branch: costs from 0.01x to 1x dense.
    trials = [_trial(f"causal & window({w})", a, c, params={"w": w})
              for w, a, c in ((8, 0.3, 0.01), (64, 0.6, 0.1), (512, 0.9, 1.0))]
    study = _study(*trials)
    assert pareto_figure(study.trials, front_trials(study.trials), "t").axes[0].get_xscale() == "log"
    assert pareto_figure(TRIALS, [], "t").axes[0].get_xscale() == "linear"  # 0.12x to 1x: linear


def test_costs_within_each_others_spread_are_said_so(tmp_path):
    """The cost's spread (the middle half of its repeated measurements) is kept in trials.csv and
    pareto.md; neighbours on the front whose spreads overlap are named as not told apart by cost."""
    study = _study(_trial("causal", 0.95, 1.0, reference="dense_causal", density=1.0, spread=(0.97, 1.04)),
                   _trial("causal & window(32)", 0.45, 0.12, params={"w": 32}, density=0.1,
                          spread=(0.11, 0.13)),
                   _trial("causal & window(64)", 0.55, 0.20, params={"w": 64}, spread=(0.18, 0.24)),
                   _trial("causal & window(128)", 0.60, 0.22, params={"w": 128}, spread=(0.21, 0.25)))
    report = write_report(study, SPACE, tmp_path, "mqar")
    rows = {int(r["number"]): r for r in _rows(report.trials_csv)}
    assert (float(rows[2]["cost_low"]), float(rows[2]["cost_high"])) == (0.18, 0.24)
    md = report.pareto_md.read_text()
    assert "| 0.12x dense [0.11-0.13] |" in md
    assert "not told apart by cost: ranks 2 and 3." in md  # 0.18-0.24 and 0.21-0.25; not 1 and 2
