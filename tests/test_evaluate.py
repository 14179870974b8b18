"""search.evaluate: determinism, held-out scoring, divergence handled, patterns resolved."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest
import torch

import patternc
from patternc.stack import Stack
from search import MajorityConfig, ModelConfig, MQARConfig, PatternConfig, TrainConfig, evaluate
from search.evaluate import resolve_pattern

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_train(**overrides):
    values = dict(steps=12, batch=4, eval_sequences=24, log_every=5, threads=1)
    return TrainConfig(**{**values, **overrides})


def tiny_mqar(**train):
    return MQARConfig(n=32, pairs=3, keys=8, values=6, distances=[2, 8, 32],
                      model=ModelConfig(d_model=16, head_dim=4, heads=2), train=tiny_train(**train))


def test_same_seed_gives_identical_results_and_another_seed_does_not():
    a, b = (evaluate("causal & window(8)", tiny_mqar(), seed=3) for _ in range(2))
    assert a.status == "ok"
    assert a.accuracy == b.accuracy and a.loss_curve == b.loss_curve and a.buckets == b.buckets
    c = evaluate("causal & window(8)", tiny_mqar(), seed=4)
    assert c.loss_curve != a.loss_curve


def test_result_fields():
    r = evaluate("causal", tiny_mqar(), seed=0)
    assert r.status == "ok" and r.failure is None and 0 <= r.accuracy <= 1
    assert list(r.buckets) == ["2-7", "8-31"] and sum(r.bucket_counts.values()) == 24 * 3
    assert r.chance == pytest.approx(1 / 6)
    assert [step for step, _ in r.loss_curve] == [5, 10, 12]  # every log_every steps, and the last
    assert (r.layers, r.heads, r.n, r.steps, r.threads) == (2, 2, 32, 12, 1)
    assert r.pattern == "causal" and r.parameters > 0 and r.wall_seconds > 0
    assert json.loads(json.dumps(r.to_dict()))["accuracy"] == r.accuracy


def test_scoring_is_on_held_out_data(monkeypatch):
    """Training batches and scoring batches come from different streams of the seed."""
    from search.tasks.mqar import MQAR

    seen = []
    original = MQAR.batch

    def spy(self, rng, size):
        batch = original(self, rng, size)
        seen.append(batch.tokens.tobytes())
        return batch

    monkeypatch.setattr(MQAR, "batch", spy)
    evaluate("causal", tiny_mqar(steps=3, eval_sequences=16, batch=16), seed=0)
    train, held_out = seen[:3], seen[3:]
    assert held_out and not set(train) & set(held_out)


def test_a_nan_loss_ends_the_run_with_a_failure_result(monkeypatch):
    from search.model import TinyTransformer

    calls = {"n": 0}
    forward = TinyTransformer.forward

    def poisoned(self, tokens, rows=None):
        calls["n"] += 1
        out = forward(self, tokens, rows)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(TinyTransformer, "forward", poisoned)
    r = evaluate("causal", tiny_mqar(), seed=0)
    assert r.status == "diverged" and r.accuracy is None and r.steps == 3
    assert "training loss became nan at step 3" in r.failure
    assert json.dumps(r.to_dict())  # still a valid JSON result


def test_majority_end_to_end():
    task = MajorityConfig(n=48, groups=2, markers=3, count=[3, 6], model=ModelConfig(d_model=16, head_dim=4),
                          train=tiny_train())
    r = evaluate("causal", task, seed=0)
    assert r.status == "ok" and list(r.buckets) == ["margin 1", "margin 2", "margin 3+"]
    assert sum(r.bucket_counts.values()) == 24 * 2


def test_threads_are_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # differs from the run's 1 thread on any machine, so a leak would show
    try:
        evaluate("causal", tiny_mqar(steps=1, threads=1), seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pattern_forms():
    model = ModelConfig(layers=3, heads=2)
    stack = resolve_pattern("causal & window(4)", model)
    assert (stack.layers, stack.heads, stack.default) == (3, 2, "causal & window(4)")
    longformer = resolve_pattern(str(ROOT / "conf/pattern/longformer.yaml"), model)
    assert (longformer.layers, longformer.heads) == (12, 12)
    inline = resolve_pattern(PatternConfig(expr="causal & window($w)", params={"w": 5}, heads=3), model)
    assert (inline.layers, inline.heads, dict(inline.params)) == (3, 3, {"w": 5})
    cp = patternc.compile(Stack(default="causal", layers=1, heads=2), 32)
    assert evaluate(cp, tiny_mqar(steps=1), seed=0).layers == 1


@pytest.mark.parametrize("pattern, message", [
    pytest.param(PatternConfig(expr="causal", default="causal"), "both expr and the stack keys default",
                 id="both"),
    pytest.param(PatternConfig(), "no pattern given: choose pattern=<name>", id="neither"),
    pytest.param("causal & windw(4)", "unknown primitive 'windw'", id="bad_expression"),
    pytest.param(patternc.compile("causal", 64), "compiled at n = 64 but task.n = 32", id="wrong_n"),
])
def test_bad_patterns_raise_clear_errors(pattern, message):
    with pytest.raises(ValueError, match=None) as error:
        evaluate(pattern, tiny_mqar(steps=1), seed=0)
    assert message in str(error.value)


@pytest.mark.parametrize("train, message", [
    pytest.param(dict(lr=2.0), "train.lr must be a number in (0, 1]", id="lr"),
    pytest.param(dict(steps=0), "train.steps must be an integer >= 1, got 0", id="steps"),
    pytest.param(dict(threads=0), "train.threads must be null (keep the process's setting) or an integer",
                 id="threads"),
    pytest.param(dict(clip=float("inf")), "train.clip must be a positive finite number", id="clip"),
    pytest.param(dict(warmup=-1), "train.warmup must be an integer >= 0", id="warmup"),
    pytest.param(dict(weight_decay=2.0), "train.weight_decay must be a number in [0, 1]", id="weight-decay"),
    pytest.param(dict(device="tpu"), "train.device: device 'tpu' is not a torch device", id="device"),
    pytest.param(dict(rungs=[-1]), "train.rungs must be a list of increasing fractions in (0, 1)",
                 id="rung-negative"),
    pytest.param(dict(rungs=[1.0]), "train.rungs must be a list of increasing fractions in (0, 1)",
                 id="rung-at-the-end"),
    pytest.param(dict(rungs=[0.5, 0.25]), "train.rungs must be a list of increasing fractions",
                 id="rungs-unsorted"),
    pytest.param(dict(promote_within=-0.1), "train.promote_within must be a number in [0, 1] (below 0 a rung "
                 "promotes nothing", id="rungs-promote-nothing"),
    pytest.param(dict(init="warm"), "train.init must be one of scratch, dense", id="init-unknown"),
    pytest.param(dict(adapt_steps=-1), "train.adapt_steps must be an integer >= 0", id="adapt-negative"),
    pytest.param(dict(promote_within=-0.1), "train.promote_within must be a number in [0, 1] (below 0",
                 id="promote-negative"),
    pytest.param(dict(screen_sequences=0), "train.screen_sequences must be an integer >= 1",
                 id="screen-sequences"),
] + ([] if torch.cuda.is_available() else [
    pytest.param(dict(device="cuda"), "train.device: device 'cuda': this torch build or machine has no CUDA",
                 id="no-gpu")]))
def test_bad_training_values(train, message):
    with pytest.raises(ValueError) as error:
        evaluate("causal", tiny_mqar(**train), seed=0)
    assert message in str(error.value)


@pytest.mark.parametrize("model, message", [
    pytest.param(dict(d_model=0), "model.d_model must be an integer >= 2 (a width of 0 or 1 trains nothing)",
                 id="d_model-0"),
    pytest.param(dict(d_model=1), "model.d_model must be an integer >= 2", id="d_model-1"),
    pytest.param(dict(heads=0), "model.heads must be an integer >= 1", id="heads"),
    pytest.param(dict(mlp_ratio=0), "model.mlp_ratio must be an integer >= 1", id="mlp_ratio"),
])
def test_degenerate_models_are_refused_before_training(model, message):
    task = tiny_mqar()
    task.model = ModelConfig(**{**dataclasses.asdict(task.model), **model})
    with pytest.raises(ValueError) as error:
        evaluate("causal", task, seed=0)
    assert message in str(error.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_the_gpu_starts_from_the_same_weights_and_learns_alike():
    cpu = evaluate("causal & window(8)", tiny_mqar(steps=60), seed=3)
    gpu = evaluate("causal & window(8)", tiny_mqar(steps=60, device="cuda"), seed=3)
    assert gpu.status == "ok" and gpu.steps == cpu.steps
    assert gpu.loss_curve[0][1] == pytest.approx(cpu.loss_curve[0][1], rel=1e-3)  # same init and batches
    assert abs(gpu.accuracy - cpu.accuracy) < 0.1
