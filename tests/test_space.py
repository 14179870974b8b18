"""Search spaces: what a trial's parameters turn into at the target and at the proxy, how one maps
onto the other, and every fault of a space named by key."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import patternc
from patternc.errors import StackError
from search.app import CONF
from search.config import ParamSpec, ProxyConfig, SpaceConfig, TargetConfig
from search.space import bind_names, build, check_space, enqueue_params, layer_group, reference, suggest


def space(**changes) -> SpaceConfig:
    base = SpaceConfig(
        name="t", template="causal & (window(ceil($w * n)) | fixed(n // $m, min($s, n // $m)))",
        params={"w": ParamSpec(type="float", low=0.01, high=0.25, log=True),
                "m": ParamSpec(type="categorical", choices=[2, 4]),
                "s": ParamSpec(type="int", low=1, high=4)},
        layer_choices=["template", "causal"], target=TargetConfig(layers=6, heads=4, n=1024, block=64),
        proxy=ProxyConfig(layers=2, heads=2, n=64, block=8),
        references={"dense": {"expr": "causal"},
                    "fixed": {"params": {"w": 0.05, "m": 4, "s": 2}, "layers": ["template", "causal"]}})
    return dataclasses.replace(base, **changes)


def test_suggest_binds_params_and_layer_choices():
    trial = optuna.trial.FixedTrial({"w": 0.1, "m": 2, "s": 3, "layer0": "causal", "layer1": "template"})
    candidate = suggest(trial, space())
    proxy, target = candidate.proxy, candidate.target
    assert dict(proxy.params) == dict(target.params) == {"w": 0.1, "m": 2, "s": 3}
    assert (proxy.layers, proxy.heads, target.layers, target.heads) == (2, 2, 6, 4)
    assert proxy.rule_at(0, 0)[0] == "causal" and proxy.rule_at(1, 1)[0] == space().template
    # proxy layer 0 stands for target layers 0..2: they are dense; 3..5 run the template
    assert [target.rule_at(l, 0)[0] for l in range(6)] == ["causal"] * 3 + [space().template] * 3
    cp = patternc.compile(proxy, 64, block=8)
    bound = patternc.compile("causal & (window(7) | fixed(32, 3))", 64, block=8)  # by hand at n = 64
    assert (cp.to_dense(layer=1, head=0) == bound.to_dense(0, 0)).all()


def test_the_proxy_runs_what_the_target_runs_at_the_middle_of_its_groups():
    s = dataclasses.replace(space(), template="causal & window(1 + l + 10 * h)", params={}, layer_choices=[],
                            references={})
    candidate = build(s, {}, ["template", "template"])
    assert [layer_group(s, p) for p in range(2)] == [(0, 3), (3, 6)]
    # proxy (p, j) reads target layer (1, 4) and head (0, 2) for j = (0, 1): 4 target heads, 2 proxy
    assert candidate.proxy.rule_at(0, 0)[0] == "causal & window(1 + 1 + 10 * 0)"
    assert candidate.proxy.rule_at(1, 1)[0] == "causal & window(1 + 4 + 10 * 2)"
    target = patternc.compile(candidate.target, 64, block=8)
    proxy = patternc.compile(candidate.proxy, 64, block=8)
    assert (proxy.to_dense(1, 1) == target.to_dense(4, 2)).all()
    assert bind_names("causal & window(8)", {"l": 3}) == "causal & window(8)"  # nothing to bind


def test_references_rebuild_through_the_trial():
    s = space()
    for name in s.references:
        trial = optuna.trial.FixedTrial(enqueue_params(s, name))
        assert reference(s, name, trial) == reference(s, name)
    assert build(s, {"w": 0.05, "m": 4, "s": 2}, ["template", "causal"]) == reference(s, "fixed")
    dense = reference(s, "dense")
    assert dense.target.default == dense.proxy.default == "causal" and dense.target.layers == 6


def test_shipped_spaces_are_valid_and_their_references_compile():
    for path in sorted((CONF / "space").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"space={path.stem}"])
        s = OmegaConf.to_object(cfg.space)
        check_space(s)
        for name in s.references:
            candidate = reference(s, name)
            patternc.compile(candidate.proxy, s.proxy.n, block=s.proxy.block)
            patternc.compile(candidate.target, s.target.n, block=s.target.block)


def _proxy(**changes) -> ProxyConfig:
    return dataclasses.replace(space().proxy, **changes)


def _target(**changes) -> TargetConfig:
    return dataclasses.replace(space().target, **changes)


@pytest.mark.parametrize("changes, message", [
    pytest.param(dict(template="causal & windw($w)"), "space.template: unknown primitive 'windw'",
                 id="bad_template"),
    pytest.param(dict(template="causal & window(ceil($w * $z * n)) | fixed(n // $m, $s)"),
                 "uses $z but space.params does not define it", id="undefined_param"),
    pytest.param(dict(template="causal & window(ceil($w * n))"), "defines m, s, which space.template never",
                 id="unused_param"),
    pytest.param(dict(params={"w": ParamSpec(type="normal", low=0, high=1), "m": ParamSpec(
        type="categorical", choices=[2]), "s": ParamSpec(type="int", low=1, high=2)}),
        "space.params.w.type must be int, float or categorical", id="bad_type"),
    pytest.param(dict(params={"w": ParamSpec(type="float", low=0, high=1, log=True), "m": ParamSpec(
        type="categorical", choices=[2]), "s": ParamSpec(type="int", low=1, high=2)}),
        "space.params.w: a log-scaled parameter needs low > 0", id="log_zero"),
    pytest.param(dict(params={"w": ParamSpec(type="float", low=0.5, high=0.1), "m": ParamSpec(
        type="categorical", choices=[2]), "s": ParamSpec(type="int", low=1, high=2)}),
        "space.params.w needs low <= high", id="low_high"),
    pytest.param(dict(params={"w": ParamSpec(type="float", low=0.1, high=0.5), "m": ParamSpec(
        type="categorical", choices=[]), "s": ParamSpec(type="int", low=1.5, high=2)}),
        "space.params.m: a categorical parameter needs choices", id="no_choices"),
    pytest.param(dict(layer_choices=["template", "casual"]),
                 "space.layer_choices[1]: unknown primitive 'casual' (did you mean 'causal'?)",
                 id="bad_layer_choice"),
    pytest.param(dict(proxy=_proxy(n=2048)), "space.proxy.n = 2048 is longer than space.target.n = 1024",
                 id="proxy_longer"),
    pytest.param(dict(proxy=_proxy(layers=8)), "space.proxy.layers = 8 is deeper than space.target.layers",
                 id="proxy_deeper"),
    pytest.param(dict(proxy=_proxy(heads=8)), "space.proxy.heads = 8 is wider than space.target.heads = 4",
                 id="proxy_wider"),
    pytest.param(dict(target=_target(block=2048)), "space.target.block = 2048 is larger than space.target.n",
                 id="target_block"),
    pytest.param(dict(proxy=_proxy(block=128)), "space.proxy.block = 128 is larger than space.proxy.n = 64",
                 id="block"),
    pytest.param(dict(target=_target(kv_heads=3)), "space.target.kv_heads must divide space.target.heads = 4",
                 id="kv_heads"),
    pytest.param(dict(proxy=_proxy(n=4, block=4)), "space.proxy.n must be at least 8", id="proxy_short"),
    pytest.param(dict(density_budget=1.5), "space.density_budget is a fraction", id="budget"),
    pytest.param(dict(references={"x": {"expr": "causal", "params": {}}}), "space.references.x must be",
                 id="bad_reference"),
])
def test_bad_spaces_name_the_key(changes, message):
    with pytest.raises(StackError) as error:
        check_space(space(**changes))
    assert message in str(error.value)
