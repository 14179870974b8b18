"""Query ranges (chunked prefill, decode steps): a pattern compiled for the queries [first, n) against
the keys [0, n) has exactly those rows of the full pattern at length n (docs/language.md), with exact
block kinds on query blocks that start at ``first``, and a FlexAttention BlockMask for them."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.attention import flex_attention as flex

import patternc
from tests.test_lowering_oracle import EMPTY, FULL, PARTIAL, PRIMITIVES, _expression, stored_kinds, text_of


def check_rows(expr: str, n: int, block, first: int) -> None:
    full = patternc.compile(expr, n, block=block)
    rows = patternc.compile(expr, n, block=block, first_query=first)
    want = full.to_dense(0, 0)[first:]
    np.testing.assert_array_equal(rows.to_dense(0, 0), want)
    bq, bk = rows.block
    np.testing.assert_array_equal(stored_kinds(rows), block_kinds_of_rows(want, bq, bk))
    s = rows.stats().at(0, 0)
    assert s.allowed_pairs == int(want.sum()) and s.waste_blocks == 0
    qs = np.arange(first, n)[:, None]
    np.testing.assert_array_equal(rows.allows(qs, np.arange(n)[None, :]), want)


def block_kinds_of_rows(rows: np.ndarray, bq: int, bk: int) -> np.ndarray:
    """(nbq, nbk) EMPTY/PARTIAL/FULL of an (nq, n) mask, in blocks that start at its first row."""
    nq, n = rows.shape
    nbq, nbk = -(-nq // bq), -(-n // bk)
    allowed = np.zeros((nbq * bq, nbk * bk), np.int64)
    area = np.zeros_like(allowed)
    allowed[:nq, :n], area[:nq, :n] = rows, 1
    allowed, area = (a.reshape(nbq, bq, nbk, bk).sum(axis=(1, 3)) for a in (allowed, area))
    return np.where(allowed == 0, EMPTY, np.where(allowed == area, FULL, PARTIAL))


@pytest.mark.parametrize("first", [0, 1, 16, 37, 99], ids=lambda f: f"first{f}")
@pytest.mark.parametrize("bq, bk", [(8, 8), (5, 3), (16, 32)], ids=["8x8", "5x3", "16x32"])
@pytest.mark.parametrize("name, make_args", [pytest.param(name, args, id=i) for i, name, args in PRIMITIVES
                                             if name != "random"])
def test_every_primitive_compiles_exactly_the_rows_asked_for(name, make_args, bq, bk, first):
    check_rows(text_of(name, make_args(100)), 100, (bq, bk), first)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_compositions_compile_exactly_the_rows_asked_for(data):
    n = data.draw(st.integers(2, 70), label="n")
    bq = data.draw(st.sampled_from([1, 2, 3, 4, 8, 16]), label="bq")
    bk = data.draw(st.sampled_from([1, 2, 3, 5, 8, 16]), label="bk")
    text, _ = _expression(data.draw, n, bq, bk, depth=3)
    first = data.draw(st.integers(0, n - 1), label="first")
    if "random" in text:
        first -= first % bq  # random() is drawn per block row: ranges start on a row
    check_rows(text, n, (bq, bk), first)


def test_random_needs_a_range_that_starts_on_a_block_row():
    check_rows("random(2, seed=4) | window(3)", 64, 8, 24)
    with pytest.raises(patternc.PatternMeaningError, match="must start at a multiple of it"):
        patternc.compile("random(2, seed=4)", 64, block=8, first_query=25)


def test_a_decode_step_is_one_row():
    cp = patternc.compile("causal & (window(4096) | sink(64))", n=131072, first_query=131071)
    assert cp.nq == 1 and cp.grid.nbq == 1
    assert cp.stats().at(0, 0).allowed_pairs == 4096 + 64
    assert cp.layout().nnz == 33  # 32 window blocks and the sink's block


def test_flex_attention_with_a_query_range_matches_the_rows_of_sdpa():
    n, first, heads = 200, 130, 2
    stack = patternc.Stack("causal & (window(20) | sink(3))", heads=heads,
                           overrides=(patternc.Override("causal & chunk(50)", None, (1, 2)),))
    cp = patternc.compile(stack, n, block=32, first_query=first)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, 16, generator=gen) for length in (n - first, n, n))
    bm = cp.to_block_mask()
    assert bm.seq_lengths == (n - first, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is not fused
        out = flex.flex_attention(q, k, v, block_mask=bm)
    mask = torch.from_numpy(patternc.compile(stack, n, block=32).to_dense(0)[:, first:])  # (H, nq, n)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               atol=1e-5, rtol=1e-5)


def test_a_query_range_saves_and_loads(tmp_path):
    cp = patternc.compile("conf/pattern/bigbird.yaml", n=1024, first_query=512)
    cp.save(tmp_path / "rows.safetensors")
    back = patternc.load(tmp_path / "rows.safetensors")
    assert back.first_query == 512 and back.nq == 512
    np.testing.assert_array_equal(back.layout(3, 2).indices, cp.layout(3, 2).indices)


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda cp: patternc.reach(cp), "whole sequences", id="reach"),
    pytest.param(lambda cp: patternc.kv(cp), "needs every query", id="kv"),
])
def test_analyses_of_whole_sequences_refuse_a_query_range(call, message):
    with pytest.raises(patternc.PatternMeaningError, match=message):
        call(patternc.compile("causal & window(8)", n=64, first_query=32))


@pytest.mark.parametrize("first", [-1, 64, 1.5, True])
def test_a_range_outside_the_sequence_is_refused(first):
    with pytest.raises(patternc.PatternSizeError, match=r"first_query must be an integer in \[0, 63\]"):
        patternc.compile("causal", n=64, first_query=first)
