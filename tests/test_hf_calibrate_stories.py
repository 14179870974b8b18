"""task=calibrate on a real pretrained model nobody here trained: stories260K (llama2.c, MIT;
tests/data/stories260K), given as its .bin file (task.model=<.bin>), calibrated on token ids it
sampled itself from BOS (no tokenizer is at hand, and its own samples are in-distribution). Beside
tests/test_hf_calibrate.py, which calibrates a small random model saved with save_pretrained."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from search.app import CONF, run_evaluate, run_search_mode
from search.errors import ConfigError
from tests.hf_models import transformers  # noqa: F401 (skips the module without transformers)
from tests.test_hf_llama2c import STORIES

calibrate_module = pytest.importorskip("search.calibrate")
CalibrateConfig, calibrate = calibrate_module.CalibrateConfig, calibrate_module.calibrate

N = 128  # a quarter of its context, so that sampling and every trial take a second or two
SHAPE = {"layers": 5, "heads": 8, "kv_heads": 4, "head_dim": 8}  # stories260K's, as space.target writes it


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> str:
    """3 sequences of N token ids sampled from stories260K at temperature 1 from BOS, as a .npy."""
    from patternc.hf import load_llama2c

    torch.manual_seed(0)
    bos = torch.ones(3, 1, dtype=torch.long)
    ids = load_llama2c(STORIES).generate(bos, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                         max_new_tokens=N - 1)  # (3, N)
    path = tmp_path_factory.mktemp("stories") / "samples.npy"
    np.save(path, ids.numpy())
    return str(path)


def config(samples: str, **changes) -> CalibrateConfig:
    return CalibrateConfig(**{"model": str(STORIES), "n": N, "data": samples, "sequences": 3, "threads": 1,
                              **changes})


def test_dense_causal_is_the_model_itself(samples):
    r = calibrate("causal", config(samples))
    assert r.score == 1.0 and r.extra["kl"] == 0.0 and not r.extra["ran"]
    assert (r.layers, r.heads, r.parameters) == (5, 8, 260_032)
    assert 0 < r.extra["dense_nll"] < np.log(512)  # the model predicts its own samples better than chance


def test_a_wider_window_keeps_more_of_the_model_and_the_backends_agree(samples):
    scores = [calibrate(f"causal & (sink(4) | window({w}))", config(samples)) for w in (16, 64)]
    assert all(r.extra["ran"] and 0 < r.score < 1 for r in scores)
    assert scores[0].score < scores[1].score
    assert scores[1].buckets["positions 0-31"] == pytest.approx(1.0, abs=1e-6)  # their whole past is kept
    sdpa = calibrate("causal & (sink(4) | window(16))", config(samples, backend="sdpa"))
    assert sdpa.score == pytest.approx(scores[0].score, rel=1e-4)


# ---- start-up checks -----------------------------------------------------------------------------

def test_a_bad_model_file_is_refused_at_start_up_naming_the_key(samples, tmp_path):
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(STORIES.read_bytes()[:-100])
    message = f"task.model: {truncated}: holds 1,056,440 bytes, but its header (dim 64, hidden 172, 5 layers"
    with pytest.raises(ConfigError, match=re.escape(message)):
        calibrate("causal", config(samples, model=str(truncated)))


def test_a_length_past_the_models_context_needs_saying_so(tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 512, (1, 1024)))
    cfg = CalibrateConfig(model=str(STORIES), n=1024, data=str(ids), sequences=1, threads=1)
    with pytest.raises(ConfigError, match=re.escape(
            "task.n = 1024 is longer than the model's context (config.max_position_embeddings = 512 in "
            f"{STORIES}): lower it, or set task.past_context=true")):
        calibrate("causal", cfg)
    cfg.past_context = True  # said so: the model runs at positions it was not trained on
    r = calibrate("causal & (sink(4) | window(512))", cfg)
    assert r.extra["ran"] and r.n == 1024 and 0 < r.score < 1


# ---- through the app -----------------------------------------------------------------------------

def _compose(samples, tmp_path, *overrides):
    target = [f"space.target.{key}={value}" for key, value in SHAPE.items()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[
            "task=calibrate", f"task.model={STORIES}", f"task.data={samples}", "task.sequences=2",
            "task.threads=1", f"search.storage=sqlite:///{tmp_path}/s.db", "space=duo_attention", *target,
            f"task.n={N}", f"space.target.n={N}", "space.target.block=16", *overrides])


def test_mode_evaluate_on_the_bin_file(samples, tmp_path):
    cfg = _compose(samples, tmp_path, "mode=evaluate", "pattern.expr='causal & (sink(4) | window(32))'")
    result = run_evaluate(cfg, tmp_path)
    assert result["task"] == "calibrate" and 0 < result["score"] < 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["extra"]["model"] == str(STORIES) and saved["layers"] == 5


def test_a_calibration_search_on_the_bin_file(samples, tmp_path):
    cfg = _compose(samples, tmp_path, "space.params.w.choices=[16,32]", "space.params.s.choices=[1,4]",
                   "space.references.streaming_llm.params.w=32", "space.density_budget=1.0",
                   "search.n_trials=6", "kernel.repeats=1", "kernel.warmup=0")
    report = run_search_mode(cfg, tmp_path / "run")
    rows = (tmp_path / "run" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 6
    assert report.front and all(0 < t.values[0] <= 1.0 for t in report.front)


def test_a_search_past_the_models_context_is_refused_naming_the_space_key(samples, tmp_path):
    """The calibration length (space.proxy.n, task.n in the calibration spaces) must be within the
    model's context; the deployment length space.target.n may exceed it (the model never runs there)."""
    from search.study import run_search

    cfg = _compose(samples, tmp_path, "task.n=1024", "space.target.n=2048")
    task, space, kernel, settings = (OmegaConf.to_object(cfg[k]) for k in ("task", "space", "kernel",
                                                                           "search"))
    message = "space.proxy.n = 1024 is longer than the model's context (config.max_position_embeddings = 512"
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_search(task, space, kernel, settings)
    assert not (tmp_path / "s.db").exists()  # refused before the study is opened


def test_the_command_line_names_the_length_past_the_context(tmp_path):
    command = [sys.executable, "-m", "search", "task=calibrate", f"task.model={STORIES}", "mode=evaluate",
               "pattern.expr='causal'", f"hydra.run.dir={tmp_path}/run"]  # task.n defaults to 4,096
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "patternc-search: error: task.n = 4096 is longer than the model's context " \
           "(config.max_position_embeddings = 512 in" in done.stderr
