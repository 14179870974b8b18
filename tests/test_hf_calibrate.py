"""task=calibrate: a pattern scored on a saved dense model without training (quality retained from
the dense model's own outputs), its data (a task generator, .npy, .txt), its checks at start-up,
and a whole calibration search through the Hydra app."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from search.app import CONF, run_evaluate, run_search_mode
from search.config import KernelConfig, SpaceConfig
from search.definition import definition
from search.errors import ConfigError
from tests.hf_models import transformers

calibrate_module = pytest.importorskip("search.calibrate")
CalibrateConfig, calibrate = calibrate_module.CalibrateConfig, calibrate_module.calibrate

N = 64
GENERATOR = {"pairs": 4, "keys": 8, "values": 8, "distances": [2, 16, 64]}
VOCAB = 1 + 8 + 8  # MQAR: filler, keys, values
SHAPE = {"layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 8}  # the model's, as space.target writes it


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama (2 layers x 4 heads of 8, 2 KV heads) saved with save_pretrained."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # sharper attention than the random init's, so that a pattern matters
        for module in model.modules():
            for name in ("q_proj", "k_proj"):
                if hasattr(module, name):
                    getattr(module, name).weight.mul_(8.0)
    path = tmp_path_factory.mktemp("calibrate") / "model"
    model.save_pretrained(path)
    return str(path)


def config(model_dir, **changes) -> CalibrateConfig:
    return dataclasses.replace(CalibrateConfig(model=model_dir, n=N, generator=dict(GENERATOR), sequences=3,
                                               threads=1), **changes)


def test_the_dense_pattern_retains_exactly_all_of_the_dense_quality(model_dir):
    r = calibrate("causal", config(model_dir))
    assert r.status == "ok" and r.score == 1.0 and r.accuracy == 1.0 and r.extra["kl"] == 0.0
    assert not r.extra["ran"]  # its layout is dense causal: the dense model itself
    assert list(r.buckets) == ["2-15", "16-63"] and sum(r.bucket_counts.values()) == 3 * 4
    assert (r.layers, r.heads, r.n, r.task) == (2, 4, N, "calibrate")


def test_the_dense_layout_run_through_the_kernel_matches_the_dense_model(model_dir, monkeypatch):
    monkeypatch.setattr(calibrate_module, "_is_dense_causal", lambda cp: False)
    r = calibrate("causal", config(model_dir))
    assert r.extra["ran"] and r.extra["kl"] < 1e-6 and r.score > 1 - 1e-6
    assert r.extra["target_accuracy"] == r.extra["dense_target_accuracy"]


def test_a_window_loses_quality_exp_of_minus_the_kl_and_the_same_each_time(model_dir):
    spec = "causal & (sink(1) | window(4))"
    r = calibrate(spec, config(model_dir))
    assert r.extra["kl"] > 1e-4 and r.extra["ran"]
    assert r.accuracy == pytest.approx(math.exp(-r.extra["kl"]))
    assert all(0 < q < 1 for q in r.buckets.values())
    assert r.score == pytest.approx(np.mean(list(r.buckets.values())))
    assert calibrate(spec, config(model_dir)).to_dict()["buckets"] == r.buckets  # deterministic
    wider = calibrate("causal & (sink(1) | window(32))", config(model_dir))
    assert r.score < wider.score < 1.0  # more of the past kept, more quality kept


def test_nll_quality_is_the_perplexity_ratio(model_dir):
    r = calibrate("causal & window(4)", config(model_dir, metric="nll"))
    assert r.accuracy == pytest.approx(math.exp(r.extra["dense_nll"] - r.extra["nll"]))
    assert r.extra["kl"] is None


def test_a_per_head_stack_and_the_backends_agree(model_dir):
    spec = "causal & (sink(2) | window(8 * (h + 1)))"
    by_backend = [calibrate(spec, config(model_dir, backend=b)).score for b in ("kernel", "sdpa")]
    assert by_backend[0] == pytest.approx(by_backend[1], abs=1e-5) and by_backend[0] < 1.0


@pytest.mark.parametrize("suffix", [".npy", ".txt", "rows.npy"])
def test_token_files(model_dir, tmp_path, suffix):
    stream = np.random.default_rng(0).integers(0, VOCAB, 3 * N + 5)
    path = tmp_path / f"ids{suffix}"
    if suffix == ".txt":
        path.write_text(" ".join(map(str, stream)))
    else:
        np.save(path, stream[: 3 * N].reshape(3, N) if suffix == "rows.npy" else stream)
    r = calibrate("causal & window(16)", config(model_dir, data=str(path)))
    assert list(r.buckets) == ["positions 0-15", "positions 16-31", "positions 32-47", "positions 48-63"]
    assert r.extra["positions"] == 3 * (N - 1)  # every next-token guess but the last
    assert r.buckets["positions 0-15"] == pytest.approx(1.0, abs=1e-6)  # the window holds their whole past
    assert r.score < 1 - 1e-4


@pytest.mark.parametrize("changes, message", [
    pytest.param({"model": "/nonexistent"}, "task.model must be a save_pretrained directory", id="model"),
    pytest.param({"model": ""}, "give task.model=<path>", id="no_model"),
    pytest.param({"data": "wiki"}, "task.data must be a .npy or .txt file of token ids, or a proxy task",
                 id="data_kind"),
    pytest.param({"data": "/nonexistent.npy"}, "task.data: no such file", id="data_file"),
    pytest.param({"generator": {"pairz": 3}}, "task.generator.pairz is not a setting of task mqar",
                 id="generator_key"),
    pytest.param({"generator": {**GENERATOR, "pairs": 30}},
                 "task.generator: task.pairs must be in [1, task.keys = 8]", id="generator_value"),
    pytest.param({"metric": "ppl"}, "task.metric must be one of kl, nll, got 'ppl'", id="metric"),
    pytest.param({"backend": "triton"}, "task.backend must be one of auto, kernel, flex, sdpa",
                 id="backend"),
    pytest.param({"sequences": 0}, "task.sequences must be an integer >= 1, got 0", id="sequences"),
    pytest.param({"n": 512}, "task.n = 512 is longer than the model's context "
                             "(config.max_position_embeddings = 256 in ", id="context"),
    pytest.param({"past_context": "yes"}, "task.past_context must be true or false, got 'yes'",
                 id="past_context"),
])
def test_bad_values_name_their_key(model_dir, changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        calibrate("causal", config(model_dir, **changes))


def test_token_files_that_do_not_fit(model_dir, tmp_path):
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(2 * N, np.int64))
    with pytest.raises(ConfigError, match=r"holds 128 tokens, which make 2 sequences of n = 64; "
                                          r"task.sequences asks for 3"):
        calibrate("causal", config(model_dir, data=str(short)))
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros(4 * N, np.float32))
    with pytest.raises(ConfigError, match=r"task.data: .*floats.npy must hold integer token ids.*float32"):
        calibrate("causal", config(model_dir, data=str(floats)))
    large = tmp_path / "large.txt"
    large.write_text(" ".join(["3", str(VOCAB)] * (2 * N)))
    with pytest.raises(ConfigError, match=rf"token ids must lie in \[0, {VOCAB}\)"):
        calibrate("causal", config(model_dir, data=str(large)))


def test_what_does_not_define_a_calibration_study(model_dir):
    a = config(model_dir)
    b = config(model_dir, threads=2, batch=3, device="cpu", backend="sdpa", past_context=True)
    space, kernel = SpaceConfig(), KernelConfig()
    assert definition(a, space, kernel, 0) == definition(b, space, kernel, 0)
    assert definition(a, space, kernel, 0) != definition(config(model_dir, metric="nll"), space, kernel, 0)


# ---- through the app -----------------------------------------------------------------------------

def _compose(model_dir, tmp_path, *overrides):
    target = [f"space.target.{key}={value}" for key, value in SHAPE.items()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[
            "task=calibrate", f"task.model={model_dir}",
            f"task.generator={json.dumps(GENERATOR)}".replace('"', ""), "task.sequences=2", "task.threads=1",
            f"search.storage=sqlite:///{tmp_path}/s.db", "space=duo_attention", *target,
            f"task.n={N}", f"space.target.n={N}", "space.target.block=16", *overrides])


def _objects(cfg) -> list:
    return [OmegaConf.to_object(cfg[key]) for key in ("task", "space", "kernel", "search")]


def test_a_reference_outside_its_choices_is_refused_at_start_up(model_dir, tmp_path):
    from search.study import run_search

    task, space, kernel, settings = _objects(_compose(model_dir, tmp_path, "space.params.w.choices=[4,8]"))
    with pytest.raises(Exception, match=r"space.references.streaming_llm.params.w = 512 is not one of "
                                        r"space.params.w.choices \[4, 8\]"):
        run_search(task, space, kernel, settings)


def test_mode_evaluate_on_a_calibration(model_dir, tmp_path):
    cfg = _compose(model_dir, tmp_path, "mode=evaluate", "pattern.expr='causal & window(8)'")
    result = run_evaluate(cfg, tmp_path)
    assert result["task"] == "calibrate" and 0 < result["score"] < 1
    assert json.loads((tmp_path / "result.json").read_text())["extra"]["metric"] == "kl"


def test_a_calibration_search_through_the_app(model_dir, tmp_path):
    cfg = _compose(model_dir, tmp_path, "space.params.w.choices=[4,8]", "space.params.s.choices=[1,4]",
                   "space.references.streaming_llm.params.w=8",
                   "space.density_budget=1.0", "search.n_trials=7", "kernel.repeats=1", "kernel.warmup=0")
    assert OmegaConf.to_object(cfg.space).proxy.n == N  # the calibration length, task.n
    report = run_search_mode(cfg, tmp_path / "run")
    trials = {t.user_attrs.get("reference") or t.number: t for t in report.front}
    assert report.front and all(0 < t.values[0] <= 1.0 for t in report.front)
    assert (tmp_path / "run" / "summary.md").is_file() and (tmp_path / "run" / "trials.csv").is_file()
    rows = (tmp_path / "run" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 7
    dense = trials.get("dense_causal")
    assert dense is None or dense.values[0] == 1.0  # on the front only when nothing as good is cheaper


@pytest.mark.parametrize("override, message", [
    ("space.target.heads=8",
     r"space.target.heads = 8 while the model .* has heads = 4: set space.target.heads=4"),
    ("space.target.kv_heads=4", r"space.target.kv_heads = 4 while the model .* has kv_heads = 2"),
    ("space.proxy.heads=2", r"space.proxy.heads = 2 must equal space.target.heads = 4"),
    ("task.n=512 space.target.n=1024",
     r"space.proxy.n = 512 is longer than the model's context "
     r"\(config.max_position_embeddings = 256 in .*\): lower it, or set task.past_context=true"),
])
def test_a_space_for_another_model_is_refused_before_any_trial(model_dir, tmp_path, override, message):
    from search.study import run_search

    task, space, kernel, settings = _objects(_compose(model_dir, tmp_path, *override.split()))
    with pytest.raises(ConfigError, match=message):
        run_search(task, space, kernel, settings)
    assert not (tmp_path / "s.db").exists()  # refused before the study is opened


def test_the_command_line_names_a_missing_model_directory(tmp_path):
    command = [sys.executable, "-m", "search", "task=calibrate", "space=duo_attention",
               f"task.model={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "patternc-search: error: task.model must be a save_pretrained directory (with config.json) or a " \
           f"llama2.c .bin file, got '{tmp_path}/nowhere'" in done.stderr and "Traceback" not in done.stderr


def test_a_calibration_search_tells_apart_patterns_that_store_the_same_blocks():
    """The model runs under the proxy's layout (the target's stack at the calibration length): its
    pairs, not only its blocks, decide a score."""
    import patternc
    from search.objective import layout_key, pairs_key

    few, more = (patternc.compile(f"causal & (sink({s}) | window(8))", N, block=16) for s in (1, 4))
    assert pairs_key(few) != pairs_key(more) and layout_key(few, few) != layout_key(few, more)
    assert layout_key(few, few) != layout_key(more, more)


def test_calibration_scores_at_the_calibration_length_and_costs_at_the_deployment_length(model_dir, tmp_path,
                                                                                         monkeypatch):
    """Issue 25 item 4: quality at space.proxy.n (task.n, within the model's context of 256), cost and
    the KV cache at space.target.n = 1024, past the context: the model never runs there."""
    import search.scorer
    from search import record

    lengths, calibrate = [], search.scorer.calibrate

    def spy(pattern, cfg, seed=0):
        lengths.append((pattern.n, cfg.n))
        return calibrate(pattern, cfg, seed=seed)

    monkeypatch.setattr(search.scorer, "calibrate", spy)

    cfg = _compose(model_dir, tmp_path, "space.params.w.choices=[4,8]", "space.params.s.choices=[1,4]",
                   "space.references.streaming_llm.params.w=8", "space.target.n=1024",
                   "space.density_budget=1.0", "search.n_trials=4", "kernel.repeats=1", "kernel.warmup=0")
    report = run_search_mode(cfg, tmp_path / "run")
    assert lengths and set(lengths) == {(N, N)}  # the model ran at the calibration length only
    scored = list(report.front)
    assert scored
    for trial in scored:
        found = record.read(trial)
        assert found.cost["n"] == 1024 and found.scorer == "calibrate"
        assert 0 < trial.values[0] <= 1.0


def test_proxy_trials_that_store_the_same_blocks_but_not_the_same_pairs_are_scored_apart():
    """The proxy trains on pairs: equal blocks with other pairs inside must not share a score."""
    import patternc
    from search.objective import layout_key

    few, more = (patternc.compile(f"causal & (sink({s}) | window(8))", N, block=16) for s in (1, 4))
    assert layout_key(few, few) != layout_key(few, more)
    again = patternc.compile("causal & (sink(1) | window(8))", N, block=16)
    assert layout_key(few, few) == layout_key(few, again)
