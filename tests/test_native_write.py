"""Writing a stack as serving configuration: write then read is the identity on the family (hf-config
and trtllm), everything else is refused naming the layer, head and term, and a superset on request
keeps every pair the stack allows (and more, never fewer)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc
from patternc import Override, Stack
from patternc.errors import ConfigError
from patternc.native import (
    LayerAttention,
    from_trtllm,
    layer_stack,
    native_layers,
    read_config,
    to_hf_config,
    to_trtllm,
)
from patternc.native.family import classify

N, BLOCK = 96, 16  # small enough to compare dense masks pair by pair, n not a multiple of every size


@st.composite
def family(draw, target: str):
    """A stack in ``target``'s family, as ``layer_stack`` writes it (the canonical form)."""
    layers = draw(st.integers(1, 5))
    heads = draw(st.sampled_from([1, 2, 4]))
    kv_heads = draw(st.sampled_from([k for k in (1, 2, 4) if heads % k == 0]))
    if target == "hf-config":
        # a chunk of 1 is a window of 1 (the diagonal alone): read back as the window
        window, chunk = draw(st.integers(1, N - 1)), draw(st.integers(2, N - 1))
        choices = [LayerAttention("full"), LayerAttention("sliding", window),
                   LayerAttention("chunked", chunk)]
        kinds = [draw(st.sampled_from(choices)) for _ in range(layers)]
    else:
        sinks = draw(st.integers(0, 8))
        sliding = st.integers(1, N - sinks - 1).map(lambda w: LayerAttention("sliding", w, sinks))
        kinds = [draw(st.one_of(st.just(LayerAttention("full")), sliding)) for _ in range(layers)]
    return layer_stack(kinds, heads, kv_heads)


def _dense(stack: Stack) -> np.ndarray:
    return patternc.compile(stack, n=N, block=BLOCK).to_dense()


@settings(max_examples=40, deadline=None)
@given(family("hf-config"))
def test_hf_config_write_then_read_is_the_identity(stack):
    written = to_hf_config(patternc.compile(stack, n=N, block=BLOCK))
    back = read_config(written).stack
    assert (back.default, back.overrides, back.kv_heads) == (stack.default, stack.overrides, stack.kv_heads)
    np.testing.assert_array_equal(_dense(back), _dense(stack))


@settings(max_examples=40, deadline=None)
@given(family("trtllm"))
def test_trtllm_write_then_read_is_the_identity(stack):
    written = to_trtllm(patternc.compile(stack, n=N, block=BLOCK))
    back = from_trtllm(written, heads=stack.heads, kv_heads=stack.kv_heads)
    assert (back.default, back.overrides, back.kv_heads) == (stack.default, stack.overrides, stack.kv_heads)
    np.testing.assert_array_equal(_dense(back), _dense(stack))


@pytest.mark.parametrize("expr, kind", [
    ("causal & window(64)", LayerAttention("sliding", 64)),
    ("window(64) & causal", LayerAttention("sliding", 64)),
    ("band(0, 63)", LayerAttention("sliding", 64)),
    ("causal & (window(64) | window(10))", LayerAttention("sliding", 64)),
    ("causal & (window(30) | sink(3))", LayerAttention("sliding", 30, 3)),
    ("causal & chunk(40)", LayerAttention("chunked", 40)),
    ("causal & window(1000)", LayerAttention("full")),  # a window past n is every causal pair at n
    ("causal & (chunk(40) | window(1))", LayerAttention("chunked", 40)),
    ("causal & window(64) & ~sink(2)", None),
    ("causal & (window(8) | stride(16))", None),
    ("causal & window(8) - diagonals([0])", None),
    ("window(8)", None),
])
def test_heads_are_classified_by_what_they_allow_not_how_they_are_written(expr, kind):
    cp = patternc.compile(expr, n=N, block=BLOCK)
    assert classify(cp.node(), cp.layout()) == kind


def stack_of(*rules: tuple[str, tuple[int, int] | None, tuple[int, int] | None], default: str = "causal",
             layers: int = 3, heads: int = 2) -> Stack:
    return Stack(default, layers=layers, heads=heads, overrides=tuple(Override(e, l, h) for e, l, h in rules))


@pytest.mark.parametrize("target, stack, message", [
    pytest.param("hf-config", stack_of(("causal & (window(16) | stride(12))", (1, 2), None)),
                 "layer 1, head 0: stride(12) in causal & (window(16) | stride(12)) is not expressible by "
                 "hf-config", id="stride"),
    pytest.param("hf-config", stack_of(("causal & (sink(4) | window(16))", (2, 3), None)),
                 "layer 2, head 0: sink(4) in causal & (sink(4) | window(16)) is not expressible by "
                 "hf-config",
                 id="sinks"),
    pytest.param("trtllm", stack_of(("causal & chunk(32)", (0, 1), None)),
                 "layer 0, head 0: chunk(32) in causal & chunk(32) is not expressible by trtllm", id="chunk"),
    pytest.param("hf-config", stack_of(("causal & window(16)", (0, 3), (1, 2))),
                 "layer 0: head 1 is sliding (window 16) (causal & window(16)) but head 0 is full (causal): "
                 "hf-config gives every head of a layer one attention", id="heads_differ"),
    pytest.param("hf-config", stack_of(("causal & window(16)", (0, 1), None),
                                       ("causal & window(32)", (2, 3), None)),
                 "layer 2 is sliding (window 32) but layer 0 is sliding (window 16): hf-config has one "
                 "sliding_window for every layer", id="two_windows"),
    pytest.param("trtllm", stack_of(("causal & (sink(4) | window(16))", (0, 1), None),
                                    ("causal & window(32)", (2, 3), None)),
                 "layer 2 is sliding (window 32) but layer 0 is sliding (window 16 + 4 sinks): trtllm has "
                 "one sink_token_length", id="two_sink_counts"),
    pytest.param("trtllm", stack_of(("window(16)", (1, 2), None)),
                 "layer 1, head 0: window(16) lets query 0 read the later key 1", id="not_causal"),
])
def test_what_the_target_cannot_express_is_refused_by_layer_head_and_term(target, stack, message):
    cp = patternc.compile(stack, n=N, block=BLOCK)
    with pytest.raises(ConfigError) as error:
        native_layers(cp, target)
    assert message in str(error.value)
    assert ("--superset" in str(error.value)) == ("later key" not in message)  # no superset for a future key


EXPRESSIONS = ["causal", "causal & window(8)", "causal & window(40)", "causal & chunk(24)",
               "causal & (sink(3) | window(12))", "causal & (window(8) | stride(20))",
               "causal & dilated(6, 3)",
               "causal & (random(1, seed=3) | window(4))", "causal & fixed(32, 2)", "causal & band(2, 9)"]


@st.composite
def any_causal_stack(draw):
    layers, heads = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2]))
    rules = tuple(Override(draw(st.sampled_from(EXPRESSIONS)), (l, l + 1), (h, h + 1))
                  for l in range(layers) for h in range(heads))
    return Stack("causal", layers=layers, heads=heads, overrides=rules)


@settings(max_examples=40, deadline=None)
@given(any_causal_stack(), st.sampled_from(["hf-config", "trtllm"]))
def test_a_superset_keeps_every_pair_and_is_the_stack_itself_on_the_family(stack, target):
    cp = patternc.compile(stack, n=N, block=BLOCK)
    layers = native_layers(cp, target, superset=True)
    wider = patternc.compile(layer_stack(list(layers), stack.heads), n=N, block=BLOCK).to_dense()
    mine = cp.to_dense()
    assert not (mine & ~wider).any()  # never fewer pairs
    try:
        exact = native_layers(cp, target)
    except ConfigError:
        return
    assert layers == exact  # in the family, the smallest superset is the stack


def test_one_window_for_every_layer_is_chosen_to_keep_the_fewest_pairs():
    stack = stack_of(("causal & window(8)", (0, 2), None), ("causal & window(90)", (2, 3), None))
    layers = native_layers(patternc.compile(stack, n=N, block=BLOCK), "hf-config", superset=True)
    # a window of 90 everywhere keeps more than two windows of 8 and one full layer
    assert layers == (LayerAttention("sliding", 8),) * 2 + (LayerAttention("full"),)


def test_the_written_fields():
    stack = layer_stack([LayerAttention("sliding", 32)] * 2 + [LayerAttention("full")], heads=4, kv_heads=2)
    cp = patternc.compile(stack, n=N, block=BLOCK)
    assert to_hf_config(cp) == {"num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
                                "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
                                "sliding_window": 32, "use_sliding_window": True,
                                "attention_chunk_size": None}
    assert to_trtllm(cp) == {"max_seq_len": N, "kv_cache_config": {"max_attention_window": [32, 32, N]}}


def test_trtllm_counts_the_sinks_inside_the_window():
    cp = patternc.compile("causal & (sink(4) | window(60))", n=1024)
    assert to_trtllm(cp)["kv_cache_config"] == {"max_attention_window": [64], "sink_token_length": 4}
    with pytest.raises(ConfigError, match=r"max_attention_window\[0\] must be an integer above "
                                          "sink_token_length = 4, got 4"):
        from_trtllm({"max_seq_len": 64, "kv_cache_config": {"max_attention_window": [4],
                                                            "sink_token_length": 4}}, heads=1)


@pytest.mark.parametrize("args, message", [
    (("dense",), "a layer's kind is one of full, sliding, chunked, got 'dense'"),
    (("full", 64), "full attention with size 64 and 0 sinks"),
    (("sliding",), "sliding attention with size None"),
    (("chunked", 64, 4), "only sliding layers keep sinks"),
])
def test_a_layer_attention_that_means_nothing_is_refused(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        LayerAttention(*args)
