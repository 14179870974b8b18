"""Reachability across layers (``patternc.reach``) against a brute-force boolean oracle.

The oracle is the definition in docs/language.md written with numpy on ``cp.to_dense()``: a layer lets ``k``
through to ``q`` when any of its heads allows ``(q, k)``; the state starts at the identity and after
layer t is ``R_t = R_{t-1} | (A_t @ R_{t-1} > 0)``; the envelope is ``k <= q`` for a causal stack
and every pair otherwise. Nothing here calls the checker's own helpers. Then: a table of known
mixing depths, the block-level bounds bracketing the exact answer, the per-head findings (empty
rows, causal leaks), the closest path, and one large-n smoke test. The bit helpers have their own
file, ``test_reach_bits.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import patternc
from patternc import Override, Stack
from patternc.reachability import ReachReport, reach
from patternc.reachability.layers import coarsen, drawn_on_blocks, layer_flows

# ---- the oracle ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oracle:
    growth: tuple[float, ...]  # covered fraction of the envelope after each layer of the stack
    mixing: int | None  # first depth (stack cycled) at which the envelope is covered
    never: bool  # a whole cycle changed nothing, short of the envelope, within the run
    at_depth: np.ndarray  # (n, n) bool: q has heard from k after the stack's own depth
    envelope: np.ndarray  # (n, n) bool


def oracle(cp: patternc.CompiledPattern, max_depth: int) -> Oracle:
    """Run the stack cyclically for ``max(max_depth, layers)`` layers with boolean matrix products."""
    n, depth = cp.n, cp.layers
    heard = cp.to_dense().any(axis=1).astype(np.int64)  # (L, n, n): q hears k in layer l
    envelope = np.tril(np.ones((n, n), bool)) if cp.causal else np.ones((n, n), bool)
    states = [np.eye(n, dtype=bool)]
    for t in range(1, max(max_depth, depth) + 1):
        before = states[-1]
        states.append(before | (heard[(t - 1) % depth] @ before.astype(np.int64) > 0))
    covered = [bool(s[envelope].all()) for s in states]
    mixing = next((t for t in range(1, len(states)) if covered[t]), None)
    # States only grow, so equal ends of a whole cycle mean no layer changed anything: a fixpoint.
    fixpoint = any(np.array_equal(states[t - depth], states[t]) for t in range(depth, len(states)))
    total = int(envelope.sum())
    growth = tuple(int((states[t] & envelope).sum()) / total for t in range(1, depth + 1))
    return Oracle(growth, mixing, mixing is None and fixpoint, states[depth], envelope)


def dense_findings(cp: patternc.CompiledPattern) -> tuple[list[tuple[int, int, int]], list[tuple]]:
    """(layer, head, q) of every row with no key, and (layer, head, q, k) of every pair with k > q."""
    dense = cp.to_dense()
    empty = [tuple(int(v) for v in x) for x in np.argwhere(~dense.any(axis=3))]
    future = [tuple(int(v) for v in x) for x in np.argwhere(np.triu(dense, k=1))]
    return empty, future


# ---- random stacks (hypothesis) ------------------------------------------------------------------


def primitives(n: int) -> st.SearchStrategy[str]:
    """Every primitive of the language with parameters that make sense at length ``n``."""
    position = st.integers(0, n - 1)
    offset = st.integers(-(n - 1), n - 1)
    grids = [st.tuples(st.integers(1, n // 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
             .map(lambda a: f"neighborhood([{a[0]}, {a[1]}], [{a[2]}, {a[3]}])")] if n >= 4 else []
    return st.one_of(
        *grids,
        st.sampled_from(["all", "none", "causal"]),
        st.integers(1, 12).map("window({})".format),
        st.tuples(st.integers(-6, 6), st.integers(0, 6)).map(lambda a: f"band({a[0]}, {a[0] + a[1]})"),
        st.tuples(st.integers(1, 5), st.integers(1, 4)).map(lambda a: f"dilated({a[0]}, {a[1]})"),
        st.integers(1, 9).map("stride({})".format),
        st.tuples(st.integers(2, 8), st.integers(1, 2)).map(lambda a: f"fixed({a[0]}, {a[1]})"),
        st.integers(1, 15).map("chunk({})".format),
        st.integers(1, 3).map("sink({})".format),
        st.integers(1, 3).map("global({})".format),
        st.integers(1, n).map("prefix({})".format),
        st.lists(position, min_size=1, max_size=3, unique=True)
        .map(lambda p: f"tokens([{', '.join(map(str, sorted(p)))}])"),
        st.lists(position, min_size=1, max_size=3, unique=True)
        .map(lambda p: f"columns([{', '.join(map(str, sorted(p)))}])"),
        st.lists(offset, min_size=1, max_size=3, unique=True)
        .map(lambda d: f"diagonals([{', '.join(map(str, sorted(d)))}])"),
        st.tuples(st.integers(1, 2), st.integers(0, 5)).map(lambda a: f"random({a[0]}, seed={a[1]})"),
    )


@st.composite
def expressions(draw, n: int, depth: int = 2) -> str:
    if depth == 0 or draw(st.integers(0, 9)) < 4:
        return draw(primitives(n))
    op = draw(st.sampled_from(["|", "&", "-", "~"]))
    if op == "~":
        return f"~({draw(expressions(n, depth - 1))})"
    return f"({draw(expressions(n, depth - 1))}) {op} ({draw(expressions(n, depth - 1))})"


SIZES = [1, 2, 3, 5, 7, 9, 17, 31, 33, 47, 63, 65, 99, 119]
BLOCK_SIDES = [1, 2, 3, 4, 5, 8, 16]


@dataclass(frozen=True)
class Case:
    stack: Stack
    n: int
    block: tuple[int, int]
    max_depth: int

    def compile(self) -> patternc.CompiledPattern:
        return patternc.compile(self.stack, n=self.n, block=self.block)


@st.composite
def cases(draw) -> Case:
    """1-4 layers x 1-3 heads, each (layer, head) drawn from a small pool of expressions (so some
    heads and layers repeat), half of them under ``causal &``, any declared causality (a stack
    declared causal is causal: ``compile`` refuses one that is not), odd lengths and square or
    rectangular blocks."""
    n = draw(st.sampled_from(SIZES))
    layers, heads = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    pool = draw(st.lists(expressions(n), min_size=1, max_size=3))
    declared = draw(st.sampled_from([None, None, True, False]))
    if declared or draw(st.booleans()):
        pool = [f"causal & ({e})" for e in pool]
    rules = tuple(Override(draw(st.sampled_from(pool)), (l, l + 1), (h, h + 1))
                  for l in range(layers) for h in range(heads))
    stack = Stack(pool[0], layers=layers, heads=heads, causal=declared, overrides=rules)
    bq = draw(st.sampled_from(BLOCK_SIDES))
    bk = draw(st.sampled_from([bq, *BLOCK_SIDES]))
    return Case(stack, n, (bq, bk), draw(st.integers(1, 12)))


RANDOM_STACKS = settings(max_examples=150, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def farthest_gap(missing: np.ndarray) -> int:
    q, k = np.nonzero(missing)
    return int(np.abs(q - k).max())


# ---- 1. the exact analysis equals the oracle -----------------------------------------------------


@RANDOM_STACKS
@given(cases())
def test_exact_report_matches_oracle(case):
    cp = case.compile()
    report = reach(cp, max_depth=case.max_depth)
    want = oracle(cp, case.max_depth)
    assert report.exact
    assert report.causal == cp.causal
    assert [lo for lo, _ in report.growth] == list(want.growth)
    assert [hi for _, hi in report.growth] == list(want.growth)
    assert report.mixing_depth == want.mixing
    assert report.never == want.never
    assert report.mixing_depth_bounds == (want.mixing, want.mixing)
    assert report.covered_fraction == want.growth[-1]
    assert report.covered_bounds == (want.growth[-1], want.growth[-1])
    missing = want.envelope & ~want.at_depth
    assert report.covered == (not missing.any())
    if not missing.any():
        assert report.unreachable is None
        assert report.closest_path is None
    else:
        assert report.unreachable is not None, "coverage is incomplete but no pair is reported"
        q, k = report.unreachable
        assert missing[q, k], f"{report.unreachable} is reached or outside the envelope"
        assert abs(q - k) == farthest_gap(missing), "not the missing pair farthest from the diagonal"
        check_token_path(report, cp)


@RANDOM_STACKS
@given(cases())
def test_findings_match_dense_heads(case):
    cp = case.compile()
    report = reach(cp, max_depth=1)
    empty, future = dense_findings(cp)
    assert report.empty_row_count == len(empty)
    assert list(report.empty_rows) == empty[: len(report.empty_rows)]
    assert len(report.empty_rows) == min(len(empty), 20)
    assert not (case.stack.causal and future), "compile let a leaky stack declared causal through"
    assert bool(report.errors) == bool(empty)


# The exact run slides ORs along offset progressions (bands, dilations, strides and their
# intersections with a band) instead of visiting pairs; these pin each shape against the oracle.
PROGRESSIONS = [
    pytest.param("window(5) & stride(3)", id="window_and_stride"),
    pytest.param("band(-5, 7) & dilated(4, 3)", id="band_and_dilated"),
    pytest.param("band(2, 9) & stride(4)", id="band_past_zero_and_stride"),
    pytest.param("band(-7, -2) & stride(2)", id="future_band_and_stride"),
    pytest.param("dilated(3, 4)", id="dilated"),
    pytest.param("stride(7)", id="stride"),
    pytest.param("band(-3, 1)", id="band"),
    pytest.param("causal & (window(6) | stride(5))", id="causal_window_or_stride"),
    pytest.param("causal & (window(4) | global(2))", id="causal_window_or_global"),
    pytest.param("(band(-7, -2) & stride(2)) | chunk(5)", id="progression_or_chunk"),
    pytest.param("causal & (dilated(2, 9) | window(3) | columns([40]))", id="three_terms"),
]


@pytest.mark.parametrize("expr", PROGRESSIONS)
@pytest.mark.parametrize("n, block", [pytest.param(61, 8, id="n61_b8"),
                                      pytest.param(100, (4, 16), id="n100_b4x16")])
def test_offset_progressions_match_oracle(expr, n, block):
    stack = Stack(expr, layers=3, heads=2, overrides=(Override("causal & window(2)", (1, 2), (1, 2)),))
    cp = patternc.compile(stack, n=n, block=block)
    report = reach(cp, max_depth=10)
    want = oracle(cp, 10)
    assert [lo for lo, _ in report.growth] == list(want.growth)
    assert (report.mixing_depth, report.never) == (want.mixing, want.never)


# ---- 2. known results ----------------------------------------------------------------------------


def strided(n: int, layers: int = 2, heads: int = 8) -> Stack:
    """Sparse Transformer strided: half the heads a window of sqrt(n), the others a stride of it."""
    s = math.isqrt(n)
    return Stack(f"causal & window({s})", layers=layers, heads=heads, causal=True,
                 overrides=(Override(f"causal & stride({s})", None, (heads // 2, heads)),))


def interleaved(layers: int, dense_at: int, c: int) -> Stack:
    """``causal & chunk(c)`` layers with one dense causal layer at ``dense_at``."""
    return Stack(f"causal & chunk({c})", layers=layers, heads=2,
                 overrides=(Override("causal", (dense_at, dense_at + 1), None),))


@pytest.mark.parametrize("n, w", [
    pytest.param(2, 2, id="n2_w2"),
    pytest.param(64, 2, id="n64_w2"),
    pytest.param(100, 8, id="n100_w8"),
    pytest.param(101, 11, id="n101_w11"),
    pytest.param(257, 17, id="n257_w17"),
    pytest.param(1000, 32, id="n1000_w32"),
    pytest.param(4096, 256, id="n4096_w256"),
    pytest.param(50, 49, id="w_just_short"),
    pytest.param(50, 50, id="w_is_n"),
    pytest.param(50, 500, id="w_past_n"),
])
def test_causal_window_mixes_in_ceil_n_minus_1_over_w_minus_1(n, w):
    want = max(1, math.ceil((n - 1) / (w - 1)))
    report = reach(patternc.compile(f"causal & window({w})", n=n, block=16), max_depth=want + 5)
    assert report.causal and report.exact
    assert report.mixing_depth == want
    assert not report.never


@pytest.mark.parametrize("n, w, want", [
    pytest.param(100, 8, 15, id="n100_w8"),
    pytest.param(257, 17, 16, id="n257_w17"),
    pytest.param(1000, 32, 33, id="n1000_w32"),
])
def test_causal_window_in_a_deep_stack_mixes_at_the_same_layer(n, w, want):
    stack = Stack(f"causal & window({w})", layers=want + 3, heads=2)
    report = reach(patternc.compile(stack, n=n, block=16))
    assert report.mixing_depth == want
    assert report.covered
    assert [g for g, _ in report.growth].index(1.0) == want - 1
    assert report.growth[want - 2][0] < 1.0


@pytest.mark.parametrize("n", [pytest.param(n, id=f"n{n}") for n in (256, 1024, 4096)])
def test_sparse_transformer_strided_mixes_in_two(n):
    report = reach(patternc.compile(strided(n), n=n, block=64))
    assert report.mixing_depth == 2
    assert report.growth[0][0] < 1.0
    assert report.covered and report.unreachable is None


@pytest.mark.parametrize("n", [pytest.param(n, id=f"n{n}") for n in (256, 1024)])
def test_shipped_sparse_transformer_file_mixes_in_two(n):
    report = reach(patternc.compile("conf/pattern/sparse_transformer_strided.yaml", n=n))
    assert (report.mixing_depth, report.covered_fraction) == (2, 1.0)


@pytest.mark.parametrize("n, w", [
    pytest.param(40, 3, id="n40_w3"),
    pytest.param(129, 8, id="n129_w8"),
    pytest.param(1000, 64, id="n1000_w64"),
])
def test_global_token_or_window_mixes_in_two(n, w):
    report = reach(patternc.compile(f"global(1) | window({w})", n=n, block=16))
    assert not report.causal
    assert report.mixing_depth == 2


@pytest.mark.parametrize("spec, n", [
    pytest.param("chunk(10)", 50, id="chunk10"),
    pytest.param("chunk(16)", 100, id="chunk16_unaligned_end"),
    pytest.param("causal & chunk(7)", 64, id="causal_chunk7"),
    pytest.param("window(4) & chunk(8)", 40, id="window_inside_chunk"),
])
def test_chunked_attention_never_mixes(spec, n):
    report = reach(patternc.compile(spec, n=n, block=8), max_depth=30)
    assert report.never
    assert report.mixing_depth is None
    assert report.mixing_depth_bounds == (None, None)
    assert report.covered_fraction < 1.0 and not report.covered


@pytest.mark.parametrize("spec, causal", [
    pytest.param("all", False, id="all"),
    pytest.param("causal", True, id="causal"),
    pytest.param("causal | ~causal", False, id="causal_or_not"),
])
@pytest.mark.parametrize("n", [1, 33, 200])
def test_dense_patterns_mix_in_one(spec, causal, n):
    report = reach(patternc.compile(spec, n=n, block=16))
    assert report.causal == (causal or n == 1)  # at n = 1 every pattern is causal
    assert report.mixing_depth == 1
    assert report.growth == ((1.0, 1.0),)
    assert report.unreachable is None


@pytest.mark.parametrize("layers, dense_at", [
    pytest.param(4, 0, id="dense_first"),
    pytest.param(5, 2, id="dense_third"),
    pytest.param(6, 5, id="dense_last"),
])
def test_chunks_interleaved_with_dense_mix_at_the_dense_layer(layers, dense_at):
    report = reach(patternc.compile(interleaved(layers, dense_at, c=16), n=100, block=8))
    assert report.mixing_depth == dense_at + 1
    assert [lo for lo, _ in report.growth[:dense_at]] == [report.growth[0][0]] * dense_at
    assert all(lo < 1.0 for lo, _ in report.growth[:dense_at])
    assert all(lo == 1.0 for lo, _ in report.growth[dense_at:])


@pytest.mark.parametrize("n, want", [pytest.param(57, 8, id="needs_8"), pytest.param(58, None, id="needs_9")])
def test_default_max_depth_is_eight_layers_for_a_one_layer_stack(n, want):
    report = reach(patternc.compile("causal & window(8)", n=n, block=8))  # ceil((n - 1) / 7) layers
    assert report.mixing_depth == want
    assert not report.never


def test_reach_takes_a_compiled_pattern():
    with pytest.raises(patternc.PatternError, match="CompiledPattern"):
        reach("causal & window(8)")


def test_shipped_llama4_chunked_stack_mixes_at_its_first_global_layer():
    cp = patternc.compile("conf/pattern/chunked_interleaved.yaml", n=2048, params={"c": 256})
    report = reach(cp)
    assert report.causal and report.mixing_depth == 4


def test_stack_that_mixes_only_when_repeated():
    # window(5) then window(3) carry 4 + 2 positions per cycle: 30 positions take 10 layers
    stack = Stack("causal & window(5)", layers=2,
                  overrides=(Override("causal & window(3)", (1, 2), None),))
    report = reach(patternc.compile(stack, n=31, block=4), max_depth=20)
    assert report.mixing_depth == 10
    assert not report.covered
    too_short = reach(patternc.compile(stack, n=31, block=4), max_depth=8)
    assert too_short.mixing_depth is None and not too_short.never


# ---- 3. the block-level bounds bracket the exact answer ------------------------------------------


@RANDOM_STACKS
@given(cases())
def test_block_bounds_bracket_exact(case):
    cp = case.compile()
    exact = reach(cp, max_depth=case.max_depth)
    blocks = reach(cp, max_depth=case.max_depth, exact_limit=0)
    assert not blocks.exact
    assert len(blocks.growth) == len(exact.growth) == cp.layers
    for layer, ((lo, hi), (truth, _)) in enumerate(zip(blocks.growth, exact.growth, strict=True)):
        assert lo <= truth <= hi, f"layer {layer}: exact {truth} outside [{lo}, {hi}]"
    for bound in (lo for lo, _ in blocks.growth), (hi for _, hi in blocks.growth):
        bound = list(bound)
        assert bound == sorted(bound), "a bound shrank from one layer to the next"
    lo, hi = blocks.covered_bounds
    assert (lo, hi) == blocks.growth[-1]
    assert lo <= exact.covered_fraction <= hi
    assert blocks.covered_fraction == lo
    first, last = blocks.mixing_depth_bounds
    truth = exact.mixing_depth
    if truth is None:
        assert last is None, f"the lower bound certifies mixing by {last}, exactly it never does"
        assert blocks.mixing_depth is None
    else:
        assert first is None or first <= truth, f"upper bound says not before {first}, exact {truth}"
        assert last is None or truth <= last, f"lower bound says by {last}, exact {truth}"
        assert not blocks.never
        assert blocks.mixing_depth in (None, truth)
    if exact.never:
        assert blocks.mixing_depth is None
    if blocks.unreachable is not None:  # a pair the upper bound never reaches: certainly missing
        want = oracle(cp, case.max_depth)
        q, k = blocks.unreachable
        assert want.envelope[q, k] and not want.at_depth[q, k]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases(), st.sampled_from([1, 2, 3]))
def test_merging_blocks_equals_recompiling_at_the_coarser_block(case, times):
    # Stacks with random() are merged, not recompiled; this pins the merge on stacks where
    # recompiling is the same pattern: both must give the same blocks, kinds and envelope-full marks.
    cp = case.compile()
    assume(not drawn_on_blocks(cp))
    block = math.lcm(*cp.block) * times  # cp.block: a side longer than n is compiled as n
    want = layer_flows(patternc.compile(case.stack, n=case.n, block=block), cp.causal)
    for layer, (fine, coarse) in enumerate(zip(layer_flows(cp, cp.causal), want, strict=True)):
        got = coarsen(fine, cp.grid, block, cp.causal)
        for name in ("rows", "cols", "kinds"):
            assert np.array_equal(getattr(got.blocks, name), getattr(coarse.blocks, name)), (layer, name)
        assert np.array_equal(got.envelope_full, coarse.envelope_full), layer


@pytest.mark.parametrize("spec, n, block", [
    pytest.param("all", 1000, 16, id="all"),
    pytest.param("causal", 1000, 16, id="causal"),
    pytest.param("causal", 1001, 16, id="causal_short_last_block"),
    pytest.param("all - none", 77, 5, id="all_odd_block"),
])
def test_block_bounds_are_tight_for_dense_patterns(spec, n, block):
    report = reach(patternc.compile(spec, n=n, block=block), exact_limit=0)
    assert not report.exact
    assert report.growth == ((1.0, 1.0),)
    assert report.mixing_depth_bounds == (1, 1)
    assert report.mixing_depth == 1
    assert report.covered


@pytest.mark.parametrize("stack, n, block", [
    # two heads PARTIAL in every block, FULL together: the layer's union must see it
    pytest.param(Stack("stride(2)", heads=2, overrides=(Override("~stride(2)", None, (1, 2)),)), 64, 8,
                 id="complementary_heads"),
    pytest.param(Stack("causal & stride(3)", heads=3,
                       overrides=(Override("causal & ~stride(3)", None, (1, 2)),)), 70, 8,
                 id="complementary_causal_heads"),
    # random() keeps its own (rectangular) blocks: the bounds merge them instead of recompiling
    pytest.param(Stack("causal", heads=2,
                       overrides=(Override("causal & random(1, seed=0)", None, (1, 2)),)), 64, (4, 8),
                 id="causal_with_random_rect"),
    pytest.param(Stack("all", heads=2, overrides=(Override("random(2, seed=1)", None, (1, 2)),)),
                 61, (6, 4), id="all_with_random_rect"),
])
def test_block_bounds_are_tight_for_dense_unions(stack, n, block):
    report = reach(patternc.compile(stack, n=n, block=block), exact_limit=0)
    assert report.growth == ((1.0, 1.0),)
    assert report.mixing_depth == 1


def test_block_bounds_are_tight_for_block_aligned_chunks():
    # chunk(32) at block 16: every block is FULL or EMPTY, so both bounds are the exact 1/8
    report = reach(patternc.compile("chunk(32)", n=256, block=16), exact_limit=0, max_depth=4)
    assert report.covered_bounds == (1 / 8, 1 / 8)
    assert report.never


# A stack declared causal cannot store a block that lies above the diagonal: compile refuses any
# pair with k > q, so no lower bound ever meets an "envelope block" that holds no envelope pair.
_ABOVE = "(~prefix(16) & prefix(24) & sink(8)) | (diagonals([-8]) & sink(9))"  # allows (0, 8)


def test_a_block_above_the_diagonal_is_refused_in_a_stack_declared_causal():
    with pytest.raises(patternc.StackError, match=r"layer 0 head 0 .* lets query 0 see key 8 > 0"):
        patternc.compile(Stack(_ABOVE, layers=2, causal=True), n=32, block=8)


@pytest.mark.parametrize("exact_limit", [pytest.param(8192, id="exact"), pytest.param(0, id="bounds")])
def test_a_layer_that_adds_nothing_is_not_a_fixpoint(exact_limit):
    # The self-only layer changes nothing; only a whole cycle without change proves "never".
    stack = Stack("causal & window(8)", layers=2, overrides=(Override("diagonals([0])", (1, 2), None),))
    report = reach(patternc.compile(stack, n=64, block=8), exact_limit=exact_limit, max_depth=40)
    assert not report.never
    first, last = report.mixing_depth_bounds
    assert first is not None and first <= 17 and (last is None or last >= 17)  # 9 windows: depth 17
    if exact_limit:
        assert report.mixing_depth == 17


def test_block_bounds_on_a_strided_stack_bracket_depth_two():
    report = reach(patternc.compile(strided(4096), n=4096, block=64), exact_limit=0)
    first, last = report.mixing_depth_bounds
    assert first is not None and first <= 2
    assert last is None or last >= 2
    assert report.growth[-1][1] == 1.0


# ---- 4. findings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, n, block, want", [
    pytest.param("band(1, 3)", 20, 4, [0], id="band_1_3"),
    pytest.param("band(1, 3)", 20, (3, 5), [0], id="band_1_3_rect"),
    pytest.param("band(2, 3)", 33, 8, [0, 1], id="band_2_3"),
    pytest.param("causal & ~band(0, 0)", 20, 4, [0], id="strictly_causal"),
    pytest.param("band(-3, -1)", 21, 4, [20], id="future_only_last_row"),
    pytest.param("columns([5]) & causal", 12, 4, [0, 1, 2, 3, 4], id="column_before_it"),
    pytest.param("causal & window(4)", 20, 4, [], id="none_empty"),
])
def test_empty_rows_of_one_head(spec, n, block, want):
    report = reach(patternc.compile(spec, n=n, block=block))
    assert report.empty_row_count == len(want)
    assert report.empty_rows == tuple((0, 0, q) for q in want)
    assert bool(report.errors) == bool(want)
    if want:
        assert f"query {want[0]}" in report.errors[0]


def test_empty_rows_of_one_head_in_a_stack():
    stack = Stack("causal", layers=3, heads=3, overrides=(Override("band(2, 4)", (1, 2), (1, 2)),))
    report = reach(patternc.compile(stack, n=40, block=8))
    assert report.empty_rows == ((1, 1, 0), (1, 1, 1))
    assert report.empty_row_count == 2
    assert len(report.errors) == 1 and "layer 1 head 1 query 0" in report.errors[0]


def test_empty_rows_are_counted_in_every_head_but_listed_only_first():
    report = reach(patternc.compile(Stack("none", layers=2, heads=3), n=50, block=8))
    assert report.empty_row_count == 2 * 3 * 50
    assert report.empty_rows == tuple((0, 0, q) for q in range(20))


@pytest.mark.parametrize("future, n, block", [
    pytest.param("window(4)", 30, 8, id="window"),
    pytest.param("band(-2, -2)", 30, 4, id="one_future_diagonal"),
    pytest.param("causal | tokens([3])", 30, 8, id="global_row"),
    pytest.param("causal | columns([29])", 30, (4, 8), id="last_column_rect"),
])
def test_compile_refuses_a_stack_declared_causal_that_is_not(future, n, block):
    stack = Stack("causal & window(8)", layers=3, heads=4, causal=True,
                  overrides=(Override(future, (2, 3), (3, 4)),))
    with pytest.raises(patternc.StackError, match="declared causal") as refused:
        patternc.compile(stack, n=n, block=block)
    found = re.search(r"layer (\d+) head (\d+) \(overrides\[0\]\.expr: .*\) lets query (\d+) see key (\d+)",
                      refused.value.message)
    layer, head, q, k = map(int, found.groups())
    assert (layer, head) == (2, 3)
    assert k > q
    undeclared = patternc.compile(dataclasses.replace(stack, causal=None), n=n, block=block)
    assert undeclared.allows(q, k, layer, head)


def test_report_to_dict_is_json_ready():
    stack = Stack("causal & window(4)", layers=2, heads=2, causal=True,
                  overrides=(Override("band(1, 2)", (1, 2), (0, 1)),))
    report = reach(patternc.compile(stack, n=30, block=8))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["covered"] is report.covered is False
    assert data["errors"] == report.errors and len(report.errors) == 1  # query 0 of band(1, 2): no key
    assert data["mixing_depth"] == report.mixing_depth
    assert data["exact"] is True


# ---- 5. the closest path -------------------------------------------------------------------------


def stored_blocks(cp: patternc.CompiledPattern, b: int) -> np.ndarray:
    """(L, nb, nb) bool: some head of layer l allows a pair in square block (Q, K) of side b."""
    n = cp.n
    nb = -(-n // b)
    pad = np.zeros((cp.layers, nb * b, nb * b), bool)
    pad[:, :n, :n] = cp.to_dense().any(axis=1)
    return pad.reshape(cp.layers, nb, b, nb, b).any(axis=(2, 4))


def check_path(report: ReachReport, cp: patternc.CompiledPattern) -> None:
    """The path starts at k's block before layer 1, takes one edge of the layered block graph per
    layer and ends, at the stack's depth, at the block nearest q's among those k's block reaches."""
    b = report.block[0]
    assert report.block == (b, b)
    q, k = report.unreachable
    path = report.closest_path
    assert path is not None
    assert [t for t, _, _ in path] == list(range(cp.layers + 1))
    for _, first, last in path:
        assert first % b == 0 and last == min(first + b, cp.n) - 1
    assert path[0][1] == k // b * b
    stored = stored_blocks(cp, b)
    blocks = [first // b for _, first, _ in path]
    for t, (x, y) in enumerate(pairwise(blocks), start=1):
        assert y == x or stored[t - 1, y, x], f"layer {t}: no edge from block {x} to block {y}"
    reached = np.zeros(stored.shape[1], bool)
    reached[k // b] = True
    for layer in stored:
        reached = reached | layer[:, reached].any(axis=1)
    candidates = np.flatnonzero(reached)
    nearest = min(candidates, key=lambda x: (abs(x - q // b), x))
    assert blocks[-1] == nearest


def heard_from(cp: patternc.CompiledPattern, k: int) -> list[np.ndarray]:
    """Oracle: per depth t = 0..L, the bool (n,) of positions that have heard key k after t layers."""
    dense = cp.to_dense().any(axis=1)  # (L, n, n): some head of layer l allows (q, k)
    heard = np.zeros(cp.n, bool)
    heard[k] = True
    out = [heard]
    for layer in dense:
        heard = heard | layer[:, heard].any(axis=1)
        out.append(heard)
    return out


def check_token_path(report: ReachReport, cp: patternc.CompiledPattern) -> None:
    """An exact path is a chain of single tokens from k, one per layer, each hop the residual or an
    allowed pair of that layer, ending at the token nearest q among those that heard k."""
    q, k = report.unreachable
    path = report.closest_path
    assert report.closest_path_exact and path is not None
    assert [t for t, _, _ in path] == list(range(cp.layers + 1))
    assert all(first == last for _, first, last in path)
    tokens = [first for _, first, _ in path]
    assert tokens[0] == k
    for layer, (x, y) in enumerate(pairwise(tokens)):
        assert x == y or any(cp.allows(y, x, layer, h) for h in range(cp.heads)), f"layer {layer}: {x} -> {y}"
    reached = np.flatnonzero(heard_from(cp, k)[-1])
    assert not (reached == q).any()
    assert tokens[-1] == min(reached, key=lambda x: (abs(x - q), x))


@pytest.mark.parametrize("n, w, block, layers", [
    pytest.param(100, 8, 8, 3, id="w8_b8"),
    pytest.param(100, 8, 4, 2, id="w8_b4"),
    pytest.param(257, 17, 16, 4, id="w17_b16_short_last"),
    pytest.param(64, 3, 8, 5, id="w3_b8"),
])
@pytest.mark.parametrize("exact_limit", [pytest.param(8192, id="exact"), pytest.param(0, id="bounds")])
def test_closest_path_of_a_too_shallow_causal_window(n, w, block, layers, exact_limit):
    cp = patternc.compile(Stack(f"causal & window({w})", layers=layers), n=n, block=block)
    report = reach(cp, exact_limit=exact_limit)
    assert not report.covered
    if exact_limit:
        assert report.unreachable == (n - 1, 0)  # the farthest pair from the diagonal
        check_token_path(report, cp)
        # a window carries a token w - 1 positions per layer, and the path does
        tokens = [first for _, first, _ in report.closest_path]
        assert all(y - x == w - 1 for x, y in pairwise(tokens))
        return
    check_path(report, cp)
    # a window moves information by at most ceil((w - 1) / b) blocks per layer, and here it does
    hop = -(-(w - 1) // block)
    blocks = [first // block for _, first, _ in report.closest_path]
    assert all(0 <= y - x <= hop for x, y in pairwise(blocks))
    assert blocks[-1] == min(layers * hop, (n - 1) // block)


@pytest.mark.parametrize("stack, n, block", [
    pytest.param(Stack("chunk(16)", layers=3), 100, 8, id="chunk"),
    pytest.param(Stack("causal & window(5)", layers=2, heads=2,
                       overrides=(Override("causal & stride(30)", None, (1, 2)),)), 200, 4,
                 id="window_and_stride"),
    pytest.param(Stack("band(-2, 3) | global(1)"), 70, 4, id="band_global"),
    pytest.param(Stack("causal & chunk(16)", layers=3), 100, 16, id="causal_chunks"),
    pytest.param(Stack("causal & (window(5) | global(1))", layers=2), 100, (4, 16), id="rect_block"),
    pytest.param(Stack("causal & (window(3) | random(1, seed=2))", layers=2), 96, (4, 8),
                 id="random_rect_block"),
])
@pytest.mark.parametrize("exact_limit", [pytest.param(8192, id="exact"), pytest.param(0, id="bounds")])
def test_closest_path_follows_the_layers(stack, n, block, exact_limit):
    """Exact: a token path (see check_token_path); block bounds: a path of the block graph."""
    cp = patternc.compile(stack, n=n, block=block)
    report = reach(cp, exact_limit=exact_limit)
    assert report.unreachable is not None
    assert report.closest_path_exact is bool(exact_limit)
    (check_token_path if exact_limit else check_path)(report, cp)


def test_a_global_prefix_does_not_carry_a_key_outside_it():
    """The issue's case: a global prefix links key block 0 to every block, but key 16 is not a
    global token; the exact path runs along the window, never through the prefix."""
    cp = patternc.compile(Stack("causal & (window(32) | global(16))", layers=3), n=512, block=64)
    report = reach(cp)
    q, k = report.unreachable
    assert (q, k) == (511, 16)
    check_token_path(report, cp)
    assert [first for _, first, _ in report.closest_path] == [16, 47, 78, 109]


@pytest.mark.parametrize("exact_limit", [pytest.param(8192, id="exact"), pytest.param(0, id="bounds")])
def test_followed_keys_match_the_oracle(exact_limit):
    """Exact: the tokens that heard each key, layer by layer, are the oracle's; block level: the
    certain blocks are wholly heard and the possible ones hold every token that heard it."""
    stack = Stack("causal & window(5)", layers=3, heads=2,
                  overrides=(Override("causal & stride(31)", None, (1, 2)),))
    cp = patternc.compile(stack, n=96, block=8)
    report = reach(cp, exact_limit=exact_limit, keys=[95, 7, 40, 7])
    spread = report.spread
    # sorted, once each, with the unreachable pair's key (the block bounds find none here)
    unreachable = {report.unreachable[1]} if exact_limit else set()
    assert exact_limit == 0 or report.unreachable[1] not in (7, 40, 95)
    assert report.unreachable is None or exact_limit
    assert spread.keys == tuple(sorted({7, 40, 95} | unreachable))
    assert spread.layers == 3 and spread.exact is bool(exact_limit)
    for index, k in enumerate(spread.keys):
        for t, heard in enumerate(heard_from(cp, k)):
            certain, possible = spread.reached(t, index)
            if exact_limit:
                assert np.array_equal(certain, heard) and np.array_equal(possible, heard)
                assert spread.tokens(t)[index] == (heard.sum(),) * 2
                continue
            per_block = heard.reshape(-1, 8)
            assert per_block[certain].all() and not per_block[~possible].any()
            low, high = spread.tokens(t)[index]
            assert low <= heard.sum() <= high


# ---- 6. large n ----------------------------------------------------------------------------------


def test_block_level_report_at_large_n_is_sound():
    n = 262_144
    cp = patternc.compile(strided(n, layers=32, heads=8), n=n, block=128)
    report = reach(cp)
    assert not report.exact
    assert (report.layers, report.heads) == (32, 8)
    assert len(report.growth) == 32
    assert all(lo <= hi for lo, hi in report.growth)
    assert report.growth[-1][1] == 1.0  # the upper bound reaches the whole envelope
    assert not report.never
    first, last = report.mixing_depth_bounds
    assert first is not None and first <= 2  # it truly mixes at 2: the upper bound cannot say later
    assert last is None or last >= 2
    assert report.empty_row_count == 0


def test_block_level_report_at_large_n_finds_an_unreachable_pair():
    n = 262_144
    cp = patternc.compile(Stack("causal & window(4096)", layers=32, heads=8), n=n, block=128)
    report = reach(cp)
    assert not report.exact and not report.never
    assert all(lo <= hi < 1.0 for lo, hi in report.growth)
    q, k = report.unreachable
    assert q - k > 32 * 4095  # 32 layers of window(4096) carry information 32 x 4095 positions
    first = report.mixing_depth_bounds[0]
    assert first is None or 32 < first <= math.ceil((n - 1) / 4095)
