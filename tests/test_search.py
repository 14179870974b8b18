"""patternc-search mode=search, end to end at tiny sizes: study, rejection before training, report."""

from __future__ import annotations

import csv
import importlib.util

import optuna
import pytest
from omegaconf import OmegaConf
from searchconf import objects, tiny

import patternc
import search.scorer
from search import record
from search.accounting import counted
from search.app import CONF, run_report_mode, run_search_mode
from search.errors import SpaceRejectsAll
from search.objective import density_vs_causal
from search.pareto import dominates
from search.samplers import EscapeRejections, make_sampler
from search.study import run_search


@pytest.fixture(autouse=True)
def cost_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path / "cost-cache"))


def test_tiny_search_end_to_end(tmp_path):
    cfg = tiny(tmp_path, "search.n_trials=5")
    report = run_search_mode(cfg, tmp_path)
    for name in ("trials.csv", "pareto.csv", "pareto.md", "pareto.png", "summary.md", "config.yaml"):
        assert (tmp_path / name).stat().st_size > 0, name
    with open(tmp_path / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(row["state"] == "COMPLETE" for row in rows) >= 5
    references = {row["reference"] for row in rows}
    assert references >= {"dense_causal", "sparse_transformer_fixed", "sliding_window"}
    front = report.front
    assert front and all(t.state.name == "COMPLETE" for t in front)
    for a in front:
        assert not any(dominates(b.values, a.values, record.DIRECTIONS) for b in front)
    for path in report.patterns:
        if path.suffix == ".yaml":
            patternc.compile(patternc.load_stack(path), 256)  # drops into conf/pattern/ and compiles
        else:
            patternc.load(path)


def test_report_mode_reports_the_study_as_it_stands_and_runs_nothing(tmp_path, monkeypatch):
    run_search_mode(tiny(tmp_path, "search.n_trials=3"), tmp_path / "worker")

    def boom(*args, **kwargs):
        raise AssertionError("mode=report trained or measured")

    monkeypatch.setattr(search.scorer, "evaluate", boom)
    monkeypatch.setattr(patternc, "measure", boom)
    report = run_report_mode(tiny(tmp_path, "mode=report"), tmp_path / "final")
    worker, final = ((tmp_path / d / "trials.csv").read_text() for d in ("worker", "final"))
    assert final == worker and report.front
    assert (tmp_path / "final" / "pareto.png").stat().st_size > 0


def test_report_mode_names_the_studies_it_could_have_meant(tmp_path):
    run_search_mode(tiny(tmp_path, "search.n_trials=1", "search.references=false"), tmp_path / "w")
    with pytest.raises(ValueError, match=r"no study 'nope' in .*there: fixed_window-mqar-n1024-seed0"):
        run_report_mode(tiny(tmp_path, "mode=report", "search.study=nope"), tmp_path / "final")


def test_infeasible_candidates_never_reach_cost_or_training(tmp_path, monkeypatch):
    trained, measured = [], []
    evaluate, measure = search.scorer.evaluate, patternc.measure

    def spy_evaluate(cp, task, seed, promote=None):
        trained.append(cp)
        return evaluate(cp, task, seed=seed, promote=promote)

    def spy_measure(cp, **kwargs):
        measured.append(cp)
        return measure(cp, **kwargs)

    monkeypatch.setattr(search.scorer, "evaluate", spy_evaluate)
    monkeypatch.setattr(patternc, "measure", spy_measure)
    # at target.n = 1024 on 128-token blocks every candidate exceeds a 0.3 budget; references still train
    task, space, kernel, settings = objects(tiny(tmp_path, "search.n_trials=4", "space.density_budget=0.3",
                                                 "search.max_rejected=6"))
    with pytest.raises(SpaceRejectsAll, match="commonest reason") as error:
        run_search(task, space, kernel, settings, progress=False)
    study = error.value.study
    rejected = [t for t in study.trials if record.read(t).status == "rejected"]
    assert rejected, "the budget should reject some candidates"
    for t in rejected:
        assert t.state.name == "PRUNED" and record.read(t).rejected
        assert record.read(t).cost is None and record.read(t).accuracy is None
        assert max(t.constraints.values()) > 0
    scored = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trained) == len(measured) == len(scored) == sum(counted(t) for t in study.trials) == 3
    for t in scored:
        feasible = max(t.constraints.values()) <= 0
        assert feasible or record.read(t).reference is not None  # only yardsticks train when infeasible


def test_rerun_with_the_same_study_resumes_it(tmp_path):
    task, space, kernel, settings = objects(tiny(tmp_path, "search.n_trials=3"))
    first = run_search(task, space, kernel, settings, progress=False)
    before = {t.number: t.values for t in first.trials if t.state.name == "COMPLETE"}
    settings.n_trials = 4
    again = run_search(task, space, kernel, settings, progress=False)
    after = {t.number: t.values for t in again.trials if t.state.name == "COMPLETE"}
    assert {k: after[k] for k in before} == before and len(after) == 4
    references = [record.read(t).reference for t in again.trials if record.read(t).reference is not None]
    assert sorted(references) == sorted(set(references))  # enqueued once, by the run that created it


def test_a_hopeless_space_stops_with_an_error_and_the_commonest_reason(tmp_path):
    task, space, kernel, settings = objects(tiny(
        tmp_path, "search.n_trials=2", "search.references=false", "search.max_rejected=5",
        "space.density_budget=0.01"))
    with pytest.raises(SpaceRejectsAll) as error:
        run_search(task, space, kernel, settings, progress=False)
    study = error.value.study
    assert len(study.trials) == 5 and all(t.state.name == "PRUNED" for t in study.trials)
    message = str(error.value)
    assert message.startswith("stopping: 5 candidates rejected in this worker (search.max_rejected)")
    assert "commonest reason (5 of them): density" in message and "over the budget 0.01" in message


@pytest.mark.parametrize("override, message", [
    pytest.param("search.sampler=bogus", "search.sampler must be one of tpe, nsga2, gp, random, got 'bogus'",
                 id="sampler"),
    pytest.param("search.n_trials=0", "search.n_trials must be an integer >= 1, got 0", id="n_trials"),
    pytest.param("search.n_trials=2", "search.n_trials = 2 is fewer than the 3 reference trials",
                 id="budget-below-references"),
    pytest.param("search.timeout=-10", "search.timeout must be null (no limit) or a positive", id="timeout"),
    pytest.param("search.heartbeat=0", "search.heartbeat must be an integer >= 1", id="heartbeat"),
    pytest.param("search.max_rejected=0", "search.max_rejected must be an integer >= 1", id="max_rejected"),
    pytest.param("search.seed=-1", "search.seed must be an integer in [0, 2**32)", id="search-seed"),
    pytest.param("seed=-3", "seed must be an integer in [0, 2**32)", id="seed"),
    pytest.param("search.worker=2", "search.worker is this worker's index among search", id="worker"),
    pytest.param("search.workers=2", "an embedded sqlite file cannot hold safely", id="sqlite-workers"),
    pytest.param("space.template='causal & windw(ceil($w * n))'", "unknown primitive 'windw'", id="template"),
    pytest.param("space.target.block=2048", "space.target.block = 2048 is larger than space.target.n = 1024",
                 id="target-block"),
    pytest.param("space.proxy.layers=8", "space.proxy.layers = 8 is deeper than space.target.layers = 4",
                 id="proxy-deeper"),
    pytest.param("space.proxy.n=2048", "space.proxy.n = 2048 is longer than space.target.n = 1024",
                 id="proxy-longer"),
    pytest.param("kernel.dtype=float64", "kernel.dtype must be one of float32, bfloat16, float16",
                 id="dtype"),
    pytest.param("kernel.backend=cuda_magic", "kernel.backend must be one of auto, kernel, flex, sdpa",
                 id="backend"),
    pytest.param("kernel.repeats=0", "kernel.repeats must be an integer >= 1, got 0", id="repeats"),
    pytest.param("kernel.batch=-1", "kernel.batch must be an integer >= 1, got -1", id="kernel-batch"),
    pytest.param("space.target.head_dim=0", "space.target.head_dim must be an integer >= 1, got 0",
                 id="target-head-dim"),
    pytest.param("space.target.kv_heads=3", "space.target.kv_heads must divide space.target.heads = 4",
                 id="kv-heads"),
    pytest.param("kernel.warmup=-1", "kernel.warmup must be an integer >= 0, got -1", id="warmup"),
    pytest.param("search.storage=nosuchdb://x", "cannot open search.storage=nosuchdb://x", id="storage"),
    pytest.param("kernel.device=tpu", "kernel.device: device 'tpu' is not a torch device",
                 id="kernel-device"),
    pytest.param("task.train.device=gpu", "task.train.device: device 'gpu' is not a torch device",
                 id="train-device"),
    pytest.param("task.train.steps=0", "task.train.steps must be an integer >= 1, got 0", id="steps"),
    pytest.param("task.train.batch=0", "task.train.batch must be an integer >= 1, got 0", id="batch"),
    pytest.param("task.train.lr=0", "task.train.lr must be a number in (0, 1]", id="lr"),
    pytest.param("task.train.eval_sequences=0", "task.train.eval_sequences must be an integer >= 1",
                 id="eval-sequences"),
    pytest.param("task.train.threads=0", "task.train.threads must be null", id="threads"),
    pytest.param("task.train.log_every=0", "task.train.log_every must be an integer >= 1", id="log-every"),
    pytest.param("task.model.d_model=0", "task.model.d_model must be an integer >= 2 (a width of 0 or 1",
                 id="d_model-0"),
    pytest.param("task.model.d_model=1", "task.model.d_model must be an integer >= 2", id="d_model-1"),
    pytest.param("task.model.head_dim=3", "task.model.head_dim must be an even integer >= 2", id="head-dim"),
    pytest.param("task.pairs=6", "task.pairs = 6 needs 18 positions", id="pairs"),
])
def test_bad_config_values_raise_clear_errors(tmp_path, override, message):
    cfg = tiny(tmp_path, override)
    with pytest.raises(ValueError) as error:
        run_search(*objects(cfg), seed=cfg.seed, progress=False)
    assert message in str(error.value)


def test_typo_in_a_search_key_fails_at_composition(tmp_path):
    with pytest.raises(Exception, match="n_trails"):
        tiny(tmp_path, "search.n_trails=3")


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_runs_a_constrained_study(tmp_path, sampler):
    task, space, kernel, settings = objects(tiny(
        tmp_path, f"search.sampler={sampler}", "search.n_trials=5", "search.references=false",
        "space.density_budget=0.8", "search.max_rejected=40"))
    study = run_search(task, space, kernel, settings, progress=False)
    assert sum(counted(t) for t in study.trials) == 5
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)


def test_a_pattern_dense_at_the_proxy_length_is_rejected(tmp_path):
    """fixed(n // 16, 8) is dense at n = 128 (chunks of 8, all summaries) but sparse at 8192: its
    proxy accuracy would be dense accuracy, so the objective rejects it before training."""
    import optuna

    from search.config import KernelConfig, MQARConfig, ParamSpec, ProxyConfig, SpaceConfig, TargetConfig
    from search.objective import Objective

    space = SpaceConfig(name="t", template="causal & fixed(n // 16, $s)",
                        params={"s": ParamSpec(type="int", low=1, high=8)},
                        target=TargetConfig(layers=2, heads=1, n=8192),
                        proxy=ProxyConfig(layers=2, heads=1, n=128, block=16),
                        density_budget=0.5)
    trial = optuna.trial.FixedTrial({"s": 8})
    with pytest.raises(optuna.TrialPruned, match=r"allows 1\.000 of the causal pairs at n = 128"):
        Objective(MQARConfig(), space, KernelConfig())(trial)
    assert trial.constraints["proxy_density"] == pytest.approx(0.5)
    assert trial.constraints["density"] < 0  # within budget at target.n: only the proxy is dense


class StuckSampler(optuna.samplers.BaseSampler):
    """Proposes the same candidate forever, as GPSampler does when its model favours a rejected region."""

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return 0.95


def test_a_run_of_rejections_is_escaped_by_a_random_candidate():
    def objective(trial):
        x = trial.suggest_float("x", 0.0, 1.0)
        if x > 0.9:  # the checks reject this region, before any training
            trial.set_user_attr(record.RECORD, {"status": "rejected"})
            raise optuna.TrialPruned()
        trial.set_user_attr(record.RECORD, {"status": "ok"})
        return x

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=EscapeRejections(StuckSampler(), seed=0, streak=3))
    study.optimize(objective, n_trials=60)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") >= 10  # StuckSampler alone: 0 of 60
    runs = "".join("P" if state == "PRUNED" else "C" for state in states).split("C")
    assert max(len(run) for run in runs) <= 3 + 2  # 3 rejections, then random draws until one passes


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_model_based_samplers_model_the_space_jointly_beside_references_written_as_expressions(name):
    # a classic reference written as an expression is a finished trial with no parameters; it once
    # emptied the search space these samplers model jointly, so GP and NSGA-II drew at random
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(name, seed=0, n_startup=2)
    study = optuna.create_study(directions=list(record.DIRECTIONS), sampler=sampler)
    study.enqueue_trial({})
    study.optimize(lambda t: (0.5, 1.0), n_trials=1)  # the reference
    study.optimize(lambda t: (t.suggest_float("w", 0.01, 0.25, log=True),
                              float(t.suggest_categorical("layer0", ["template", "causal"]) == "causal")),
                   n_trials=6)
    trial = study.ask()
    assert set(sampler.infer_relative_search_space(study, trial)) == {"w", "layer0"}


def test_nsga2_runs_its_generations_beside_a_reference_written_as_an_expression():
    # NSGA-II finds its generations by indexing the trials with their numbers: it sees every trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=list(record.DIRECTIONS), sampler=make_sampler("nsga2", 0, 2))
    for _ in range(3):
        study.enqueue_trial({})
    study.optimize(lambda t: (0.5, 1.0), n_trials=3)  # the references
    study.optimize(lambda t: (t.suggest_float("w", 0.01, 0.25), t.suggest_float("f", 0.01, 0.5)), n_trials=16)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 19


def test_density_vs_causal_is_the_mean_block_density_over_dense_causals():
    assert density_vs_causal(patternc.compile("causal", 1024, block=128)) == 1.0
    stack = patternc.Stack(default="causal & window(128)", layers=2, heads=2,
                           overrides=(patternc.stack.Override("causal", layers=(1, 2)),))
    cp = patternc.compile(stack, 1024, block=128)  # layer 0: 2 blocks a row (1 in row 0); layer 1: dense
    assert density_vs_causal(cp) == pytest.approx(((15 / 64) + (36 / 64)) / 2 / (36 / 64))


def _search_targets():
    path = CONF.parent / "benchmarks" / "search_targets.py"
    spec = importlib.util.spec_from_file_location("search_targets", path)
    search_targets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(search_targets)
    return search_targets


def test_search_targets_scores_the_classics_and_the_front_again_under_each_seed(tmp_path, capsys,
                                                                               monkeypatch):
    search_targets = _search_targets()
    cfg = tiny(tmp_path, "task.train.init=dense", "search.n_trials=5", f"search.artifacts={tmp_path}/store")
    run_search_mode(cfg, tmp_path)
    rows = search_targets.read_trials(tmp_path)
    task, space, _, settings = objects(cfg)
    scores = search_targets.rescore(rows, task, space, settings, [0, 1], near=1.0, cost_bound=1e9)
    references = {r["reference"] for r in rows if r["reference"] and r["state"] == "COMPLETE"}
    assert references <= set(scores) and len(references) == 3
    assert all(len(v) == 2 and all(0.0 <= x <= 1.0 for x in v) for v in scores.values())
    # seed 0 is the run's own scorer: its full scores are the run's
    run_scores = {r["reference"]: float(r["accuracy"]) for r in rows if r["reference"]}
    assert all(scores[name][0] == pytest.approx(run_scores[name]) for name in references)
    out = capsys.readouterr().out
    assert "standard errors" in out and "sparse_transformer_fixed" in out
    assert len([n for n in (tmp_path / "store").iterdir() if n.name.startswith("dense-")]) == 4  # 2 seeds

    def no_training(*args, **kwargs):
        raise AssertionError("scored again: the store holds every score")

    monkeypatch.setattr("search.scorer.Adapt.score", no_training)
    assert search_targets.rescore(rows, task, space, settings, [0, 1], near=1.0, cost_bound=1e9) == scores


def test_cost_remeasure_times_each_scored_trial_again_beside_its_recorded_cost(tmp_path, capsys, monkeypatch):
    overrides = ["experiment=tiny", f"search.storage=sqlite:///{tmp_path}/s.db", "search.n_trials=3"]
    run_search_mode(tiny(tmp_path, *overrides[2:]), tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))  # as Hydra keeps them
    monkeypatch.syspath_prepend(str(CONF.parent / "benchmarks"))
    path = CONF.parent / "benchmarks" / "cost_remeasure.py"
    spec = importlib.util.spec_from_file_location("cost_remeasure", path)
    cost_remeasure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost_remeasure)
    monkeypatch.setattr("sys.argv", ["cost_remeasure.py", str(tmp_path)])
    cost_remeasure.main()
    out = capsys.readouterr().out
    scored = sum(row["state"] == "COMPLETE" for row in _search_targets().read_trials(tmp_path))
    assert out.count(" recorded ") == scored and f"{scored} trials measured again" in out


def test_search_targets_reads_a_run_back(tmp_path, capsys):
    search_targets = _search_targets()
    run_search_mode(tiny(tmp_path, "search.n_trials=4"), tmp_path)
    rows = search_targets.read_trials(tmp_path)
    search_targets.report(rows, near=1.0, cost_bound=1e9)  # every scored feasible trial qualifies
    out = capsys.readouterr().out
    assert f"{sum(r['state'] == 'COMPLETE' for r in rows)} scored" in out
    assert "dense causal: accuracy" in out and "from the first trial's start" in out
    assert "meets the 1000000000.0x bound" in out
    search_targets.report(rows, near=-1.0, cost_bound=0.25)  # nothing is better than dense by 1
    assert "no feasible pattern within -1.0" in capsys.readouterr().out
