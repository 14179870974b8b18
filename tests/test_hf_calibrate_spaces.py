"""Per-head choices in a search space (``space.head_choices``) and the calibration spaces
(conf/space/duo_attention.yaml, moa.yaml, minference.yaml): each head gets its pattern at the target
and at the proxy, references rebuild their head choices, faults are named at start-up."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import patternc
from patternc import StackError
from search.app import CONF
from search.config import ParamSpec, ProxyConfig, SpaceConfig, TargetConfig
from search.space import TEMPLATE, build, check_space, enqueue_params, reference, suggest

STREAMING = "causal & (sink($s) | window($w))"
WIDE = "causal & window(2 * $w)"


def _space(**changes) -> SpaceConfig:
    base = SpaceConfig(name="duo", template=STREAMING,
                       params={"s": ParamSpec(type="categorical", choices=[1, 4]),
                               "w": ParamSpec(type="int", low=4, high=16)},
                       head_choices=[TEMPLATE, "causal", WIDE],
                       target=TargetConfig(layers=2, heads=2, kv_heads=2, head_dim=8, n=64, block=8),
                       proxy=ProxyConfig(layers=2, heads=2, n=64, block=8),
                       references={"half": {"params": {"s": 1, "w": 8},
                                            "heads": [["causal", TEMPLATE], [TEMPLATE, "causal"]]}})
    return dataclasses.replace(base, **changes)


def _rules(stack) -> list[str]:
    return [stack.rule_at(l, h)[0] for l in range(stack.layers) for h in range(stack.heads)]


def test_head_choices_give_each_head_its_pattern():
    trial = optuna.trial.FixedTrial({"s": 4, "w": 6, "head0.0": "causal", "head0.1": TEMPLATE,
                                     "head1.0": WIDE, "head1.1": TEMPLATE})
    candidate = suggest(trial, _space())
    assert _rules(candidate.target) == ["causal", STREAMING, WIDE, STREAMING]
    assert _rules(candidate.proxy) == _rules(candidate.target)
    assert dict(candidate.target.params) == {"s": 4, "w": 6}
    dense = patternc.compile(candidate.target, 64).to_dense(0, 0)
    assert dense.sum() == 64 * 65 // 2  # head (0, 0) is full


def test_a_proxy_head_stands_for_its_group_of_target_heads_and_layers():
    space = _space(target=TargetConfig(layers=4, heads=4, kv_heads=2, head_dim=8, n=64, block=8))
    candidate = build(space, {"s": 1, "w": 4}, [TEMPLATE] * 2, [["causal", TEMPLATE], [TEMPLATE, WIDE]])
    # proxy layer 0 -> target layers 0-1, proxy head 0 -> target heads 0-1
    assert _rules(candidate.target) == ["causal", "causal", STREAMING, STREAMING] * 2 + \
        [STREAMING, STREAMING, WIDE, WIDE] * 2


def test_a_layer_choice_covers_its_heads():
    space = _space(layer_choices=[TEMPLATE, "causal & window(3)"])
    candidate = build(space, {"s": 1, "w": 4}, ["causal & window(3)", TEMPLATE],
                      [[WIDE, WIDE], ["causal", TEMPLATE]])
    assert _rules(candidate.target) == ["causal & window(3)"] * 2 + ["causal", STREAMING]
    assert _rules(candidate.proxy) == _rules(candidate.target)


def test_a_params_reference_rebuilds_its_head_choices():
    space = _space()
    params = enqueue_params(space, "half")
    assert params == {"s": 1, "w": 8, "head0.0": "causal", "head0.1": TEMPLATE, "head1.0": TEMPLATE,
                      "head1.1": "causal"}
    assert reference(space, "half", optuna.trial.FixedTrial(params)) == reference(space, "half")
    assert _rules(reference(space, "half").target) == ["causal", STREAMING, STREAMING, "causal"]


def test_params_used_only_by_a_head_choice_count_as_used():
    check_space(_space(template="causal & sink($s)", head_choices=[TEMPLATE, "causal & window($w)"],
                       references={}))
    with pytest.raises(StackError, match=r"defines w, which space.template never uses \(nor any layer or"):
        check_space(_space(template="causal & sink($s)", head_choices=[TEMPLATE, "causal"], references={}))


@pytest.mark.parametrize("changes, message", [
    ({"head_choices": [TEMPLATE, "causal & windw(4)"]}, r"space.head_choices\[1\]: "),
    ({"references": {"r": {"params": {"s": 1, "w": 8}, "heads": [["causal", TEMPLATE]]}}},
     r"space.references.r.heads must be 2 rows \(one per proxy layer\) of 2 entries"),
    ({"references": {"r": {"params": {"s": 1, "w": 8}, "heads": [["full", TEMPLATE], [TEMPLATE] * 2]}}},
     r"space.references.r.heads must be .* of space.head_choices"),
    ({"references": {"r": {"params": {"s": 3, "w": 8}}}},
     r"space.references.r.params.s = 3 is not one of space.params.s.choices \[1, 4\]"),
])
def test_faults_of_head_choices_are_named(changes, message):
    with pytest.raises(StackError, match=message):
        check_space(_space(**changes))


@pytest.mark.parametrize("name", ["duo_attention", "moa", "minference"])
def test_the_calibration_spaces_compose_and_their_references_compile(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"space={name}", "task=calibrate", "task.n=512",
                                           "space.target.n=1024"])
    space = OmegaConf.to_object(cfg.space)
    check_space(space)
    # the proxy is the model (the target's layers and heads) at the calibration length, task.n
    assert space.proxy == ProxyConfig(layers=space.target.layers, heads=space.target.heads, n=512,
                                      block=space.target.block)
    assert {"dense_causal", "streaming_llm", "sliding_window"} <= set(space.references)
    for ref in space.references:
        candidate = reference(space, ref)
        patternc.compile(candidate.target, space.target.n, block=space.target.block)
    values = {key: spec.choices[0] if spec.type == "categorical" else spec.low
              for key, spec in space.params.items()}
    heads = {f"head{p}.{j}": space.head_choices[-1 - j % 2]
             for p in range(space.proxy.layers) for j in range(space.proxy.heads)}
    trial = optuna.trial.FixedTrial({**values, **heads})
    candidate = suggest(trial, space)
    assert len(set(_rules(candidate.target))) == 2  # heads differ
