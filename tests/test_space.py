"""Search spaces: what a trial's parameters turn into, and every fault of a space named by key."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import patternc
from patternc.errors import StackError
from search.app import CONF
from search.config import ParamSpec, SpaceConfig
from search.space import build_stack, check_space, enqueue_params, reference_stack, suggest


def space(**changes) -> SpaceConfig:
    base = SpaceConfig(
        name="t", template="causal & (window(ceil($w * n)) | fixed(n // $m, min($s, n // $m)))",
        params={"w": ParamSpec(type="float", low=0.01, high=0.25, log=True),
                "m": ParamSpec(type="categorical", choices=[2, 4]),
                "s": ParamSpec(type="int", low=1, high=4)},
        layer_choices=["template", "causal"], layers=2, heads=2, block=8, n_proxy=64, n_target=1024,
        references={"dense": {"expr": "causal"},
                    "fixed": {"params": {"w": 0.05, "m": 4, "s": 2}, "layers": ["template", "causal"]}})
    return dataclasses.replace(base, **changes)


def test_suggest_binds_params_and_layer_choices():
    trial = optuna.trial.FixedTrial({"w": 0.1, "m": 2, "s": 3, "layer0": "causal", "layer1": "template"})
    stack = suggest(trial, space())
    assert dict(stack.params) == {"w": 0.1, "m": 2, "s": 3}
    assert stack.rule_at(0, 0)[0] == "causal" and stack.rule_at(1, 1)[0] == space().template
    cp = patternc.compile(stack, 64, block=8)
    bound = patternc.compile("causal & (window(7) | fixed(32, 3))", 64, block=8)  # by hand at n = 64
    assert (cp.to_dense(layer=1, head=0) == bound.to_dense(0, 0)).all()


def test_references_rebuild_through_the_trial():
    s = space()
    for name in s.references:
        trial = optuna.trial.FixedTrial(enqueue_params(s, name))
        assert reference_stack(s, name, trial) == reference_stack(s, name)
    assert build_stack(s, {"w": 0.05, "m": 4, "s": 2}, ["template", "causal"]) == reference_stack(s, "fixed")


def test_shipped_spaces_are_valid_and_their_references_compile():
    for path in sorted((CONF / "space").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[f"space={path.stem}"])
        s = OmegaConf.to_object(cfg.space)
        check_space(s)
        for name in s.references:
            stack = reference_stack(s, name)
            patternc.compile(stack, s.n_proxy, block=s.block)
            patternc.compile(stack, s.n_target, block=s.target_block)


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
    pytest.param(dict(n_proxy=2048), "need 8 <= space.n_proxy <= space.n_target", id="lengths"),
    pytest.param(dict(target_block=2048), "space.target_block = 2048 is larger than space.n_target = 1024",
                 id="target_block"),
    pytest.param(dict(block=128), "space.block = 128 is larger than space.n_proxy = 64", id="block"),
    pytest.param(dict(density_budget=1.5), "space.density_budget is a fraction", id="budget"),
    pytest.param(dict(references={"x": {"expr": "causal", "params": {}}}), "space.references.x must be",
                 id="bad_reference"),
])
def test_bad_spaces_name_the_key(changes, message):
    with pytest.raises(StackError) as error:
        check_space(space(**changes))
    assert message in str(error.value)
