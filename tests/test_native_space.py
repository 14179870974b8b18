"""conf/space/native_hybrid.yaml searches the family serving engines run natively: every sample of
the space (its references, and trials drawn over every ratio) exports to hf-config and reads back
as the same layers, at the target's length."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import patternc
from patternc.native import native_layers, read_config, to_hf_config
from search.app import CONF
from search.space import check_space, reference, suggest


@pytest.fixture(scope="module")
def space():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["space=native_hybrid"])
    s = OmegaConf.to_object(cfg.space)
    check_space(s)
    return s


def _samples(space):
    yield from (reference(space, name) for name in space.references)
    windows = np.random.default_rng(0).uniform(np.log(0.005), np.log(0.25), 3)  # log-uniform, as the space
    for r in space.params["r"].choices:  # every ratio, each with windows drawn over the range
        for w in np.exp(windows):
            yield suggest(optuna.trial.FixedTrial({"r": r, "w": float(w)}), space)


def test_every_sample_exports_to_hf_config_and_reads_back(space):
    samples = list(_samples(space))
    assert len(samples) == len(space.references) + 3 * len(space.params["r"].choices)
    for candidate in samples:
        cp = patternc.compile(candidate.target, n=space.target.n, block=space.target.block)
        written = to_hf_config(cp)
        back = patternc.compile(read_config(written).stack, n=space.target.n, block=space.target.block)
        for l in range(cp.layers):
            for h in range(cp.heads):
                assert back.node(l, h) == cp.node(l, h), (candidate.target.params, l, h)


def test_the_ratio_and_window_are_what_they_say(space):
    gemma = reference(space, "gemma3").target
    written = to_hf_config(patternc.compile(gemma, n=space.target.n, block=space.target.block))
    assert written["sliding_window"] == 256  # 1/32 of 8,192, as Gemma 3's 4,096 of 131,072
    assert [t[0] for t in written["layer_types"]] == list("sssssfsssssf")
    every = to_hf_config(patternc.compile(reference(space, "sliding_window").target, n=space.target.n))
    assert set(every["layer_types"]) == {"sliding_attention"} and every["sliding_window"] == 1024
    # the proxy runs each layer's kind at its own length
    proxy = patternc.compile(reference(space, "gemma3").proxy, n=space.proxy.n, block=space.proxy.block)
    layers = [str(layer) for layer in native_layers(proxy)]
    assert layers[4:6] == ["causal & window(8)", "causal"]
