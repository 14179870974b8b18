"""Lowering checked against a dense brute-force oracle, pair by pair and block kind by block kind.

The oracle below is written from the table of primitives in docs/language.md with numpy broadcasting over
``q = arange(n)[:, None]`` and ``k = arange(n)[None, :]``; it never calls patternc's predicates.
The only thing borrowed is ``random_block_table`` (the draw itself), which has its own tests here.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patternc
from patternc.primitives.random_blocks import random_block_table

EMPTY, PARTIAL, FULL = 0, 1, 2


# ---- the oracle ----------------------------------------------------------------------------------


def _grid(n):
    return np.arange(n)[:, None], np.arange(n)[None, :]


def _in(values, points):
    return np.isin(values, np.asarray(points, np.int64))


def dense(name, args, n, bq, bk, layer=0, head=0):
    """The (n, n) allowed-pair matrix of one primitive, straight from the definitions."""
    q, k = _grid(n)
    d = q - k
    shape = (n, n)
    match name:
        case "all":
            m = np.ones(shape, bool)
        case "none":
            m = np.zeros(shape, bool)
        case "causal":
            m = k <= q
        case "window":
            (w,) = args
            m = np.abs(d) < w
        case "band":
            lo, hi = args
            m = (lo <= d) & (d <= hi)
        case "dilated":
            w, dd = args
            m = (d % dd == 0) & (np.abs(d) < w * dd)
        case "stride":
            (s,) = args
            m = d % s == 0
        case "fixed":
            c, s = args
            m = (q // c == k // c) | (k % c >= c - s)
        case "chunk":
            (c,) = args
            m = q // c == k // c
        case "sink":
            (g,) = args
            m = k < g
        case "global":
            (g,) = args
            m = (k < g) | (q < g)
        case "tokens":
            (pos,) = args
            m = _in(k, pos) | _in(q, pos)
        case "columns":
            (pos,) = args
            m = _in(k, pos)
        case "diagonals":
            (offs,) = args
            m = _in(d, offs)
        case "prefix":
            (p,) = args
            m = (q < p) & (k < p)
        case "documents":  # documents start at the listed positions and at 0
            (starts,) = args
            doc = np.searchsorted(np.array(sorted({0, *starts})), np.arange(n), "right")
            m = doc[q] == doc[k]
        case "neighborhood":  # NATTEN's window: kernel cells per axis, shifted inward at borders
            size, kernel = args
            cells = int(np.prod(size))
            allowed = (q < cells) & (k < cells)
            cq = np.unravel_index(np.minimum(q, cells - 1), size)
            ck = np.unravel_index(np.minimum(k, cells - 1), size)
            for a, (s, kw) in enumerate(zip(size, kernel, strict=True)):
                kw = min(kw, s)
                start = np.clip(cq[a] - kw // 2, 0, s - kw)
                allowed = allowed & (start <= ck[a]) & (ck[a] < start + kw)
            m = allowed
        case "random":
            r, seed = args
            nbq, nbk = -(-n // bq), -(-n // bk)
            table = random_block_table(seed, layer, head, min(r, nbk), nbq, nbk)
            drawn = np.zeros((nbq, nbk), bool)
            drawn[np.arange(nbq)[:, None], table] = True
            m = drawn[q // bq, k // bk]
        case _:
            raise AssertionError(name)
    return np.broadcast_to(m, shape).copy()


def text_of(name, args):
    if name in ("all", "none", "causal"):
        return name
    if name in ("tokens", "columns", "diagonals", "documents"):
        return f"{name}([{', '.join(str(v) for v in args[0])}])"
    if name == "random":
        return f"random({args[0]}, seed={args[1]})"
    if name == "neighborhood":
        return f"neighborhood({list(args[0])}, {list(args[1])})"
    return f"{name}({', '.join(str(v) for v in args)})"


def block_kinds(m, bq, bk):
    """(nbq, nbk) kinds of the dense matrix ``m``, truncated last blocks included."""
    n = m.shape[0]
    nbq, nbk = -(-n // bq), -(-n // bk)
    pad = np.zeros((nbq * bq, nbk * bk), np.int64)
    valid = np.zeros_like(pad)
    pad[:n, :n] = m
    valid[:n, :n] = 1
    allowed = pad.reshape(nbq, bq, nbk, bk).sum(axis=(1, 3))
    area = valid.reshape(nbq, bq, nbk, bk).sum(axis=(1, 3))
    return np.where(allowed == 0, EMPTY, np.where(allowed == area, FULL, PARTIAL))


def stored_kinds(cp, layer=0, head=0):
    """(nbq, nbk) kinds from the compiled CSR (EMPTY where nothing is stored)."""
    indptr, indices, full = cp.layout(layer, head)
    out = np.zeros((cp.grid.nbq, cp.grid.nbk), np.int64)
    rows = np.repeat(np.arange(cp.grid.nbq), np.diff(indptr))
    assert len(np.unique(rows * cp.grid.nbk + indices)) == len(indices), "a block stored twice"
    out[rows, indices] = np.where(full, FULL, PARTIAL)
    return out


def check_against(cp, want, bq, bk, layer=0, head=0):
    """Every check of the contract: dense, block kinds, allows, stats."""
    n = cp.n
    got = cp.to_dense(layer, head)
    bad = np.argwhere(got != want)
    if len(bad):
        at = tuple(bad[0])
        raise AssertionError(f"pair (q, k) = {at}: compiled {got[at]}, oracle {want[at]}")

    ours, theirs = stored_kinds(cp, layer, head), block_kinds(want, bq, bk)
    bad = np.argwhere(ours != theirs)
    names = {EMPTY: "EMPTY", PARTIAL: "PARTIAL", FULL: "FULL"}
    assert not len(bad), (f"block {tuple(bad[0])}: stored {names[ours[tuple(bad[0])]]}, "
                          f"oracle {names[theirs[tuple(bad[0])]]}")

    rng = np.random.default_rng(n * 1000 + bq * 10 + bk)
    qs, ks = rng.integers(0, n, 300), rng.integers(0, n, 300)
    np.testing.assert_array_equal(cp.allows(qs, ks, layer, head), want[qs, ks])
    # broadcasting: a column of queries against a row of keys is the whole matrix
    np.testing.assert_array_equal(cp.allows(np.arange(n)[:, None], np.arange(n)[None, :],
                                            layer, head), want)

    s = cp.stats().per_head[layer * cp.heads + head]
    assert s.allowed_pairs == int(want.sum())
    assert s.waste_blocks == 0
    assert s.full_blocks == int((theirs == FULL).sum())
    assert s.partial_blocks == int((theirs == PARTIAL).sum())
    assert s.nnz == int((theirs != EMPTY).sum())


# ---- every primitive at odd n and block shapes ---------------------------------------------------


def _spread(n, picks):
    """Distinct positions in [0, n) from fractions of n."""
    return sorted({min(n - 1, int(f * n)) for f in picks})


def _grid2(n):
    """rows x cols near the square root of n, leaving some tokens off the grid when n is odd."""
    rows = max(1, int(np.sqrt(n)))
    return rows, max(1, n // rows - (n % 2))


def _grid3(n):
    frames = 2 if n >= 8 else 1
    rows, cols = _grid2(n // frames)
    return frames, rows, cols


def _offsets(n, wanted):
    return sorted({o for o in wanted if -n < o < n} or {0})


# (id, name, args-of-n): args may depend on n because positions and offsets must lie in range.
PRIMITIVES = [
    ("all", "all", lambda n: ()),
    ("none", "none", lambda n: ()),
    ("causal", "causal", lambda n: ()),
    ("window1", "window", lambda n: (1,)),
    ("window3", "window", lambda n: (3,)),
    ("window_past_n", "window", lambda n: (1000,)),
    ("band_asym", "band", lambda n: (-2, 5)),
    ("band_one_diag", "band", lambda n: (3, 3)),
    ("band_future", "band", lambda n: (-5, -1)),
    ("band_wide", "band", lambda n: (-1000, 1000)),
    ("dilated3x2", "dilated", lambda n: (3, 2)),
    ("dilated4x5", "dilated", lambda n: (4, 5)),
    ("dilated_big_d", "dilated", lambda n: (2, 1000)),
    ("stride1", "stride", lambda n: (1,)),
    ("stride3", "stride", lambda n: (3,)),
    ("stride17", "stride", lambda n: (17,)),
    ("fixed4x1", "fixed", lambda n: (4, 1)),
    ("fixed5x2", "fixed", lambda n: (5, 2)),
    ("fixed3x3", "fixed", lambda n: (3, 3)),
    ("fixed_past_n", "fixed", lambda n: (1000, 2)),
    ("chunk1", "chunk", lambda n: (1,)),
    ("chunk4", "chunk", lambda n: (4,)),
    ("chunk7", "chunk", lambda n: (7,)),
    ("chunk_past_n", "chunk", lambda n: (1000,)),
    ("sink1", "sink", lambda n: (1,)),
    ("sink5", "sink", lambda n: (5,)),
    ("global3", "global", lambda n: (3,)),
    ("global_past_n", "global", lambda n: (1000,)),
    ("tokens", "tokens", lambda n: (_spread(n, [0, 0.5, 0.99]),)),
    ("tokens_last", "tokens", lambda n: ([n - 1],)),
    ("columns", "columns", lambda n: (_spread(n, [0.1, 0.3, 0.31, 0.9]),)),
    ("diagonals", "diagonals", lambda n: (_offsets(n, [0, 2, -3, 40, -90]),)),
    ("prefix1", "prefix", lambda n: (1,)),
    ("prefix5", "prefix", lambda n: (5,)),
    ("prefix_past_n", "prefix", lambda n: (1000,)),
    ("random1", "random", lambda n: (1, 0)),
    ("random2", "random", lambda n: (2, 7)),
    ("random5", "random", lambda n: (5, 1)),
    ("documents", "documents", lambda n: (_spread(n, [0.2, 0.21, 0.5, 0.77]),)),
    ("documents_one", "documents", lambda n: ([0],)),
    # grids: the largest rows x cols (x frames) that fit n, odd, even and too-large kernels
    ("neighborhood2d_3x3", "neighborhood", lambda n: (_grid2(n), (3, 3))),
    ("neighborhood2d_even", "neighborhood", lambda n: (_grid2(n), (2, 4))),
    ("neighborhood2d_row", "neighborhood", lambda n: (_grid2(n), (1, 5))),
    ("neighborhood2d_whole", "neighborhood", lambda n: (_grid2(n), (100, 100))),
    ("neighborhood3d", "neighborhood", lambda n: (_grid3(n), (2, 3, 3))),
    ("neighborhood1d", "neighborhood", lambda n: ((max(1, n - 2),), (5,))),
]

SIZES = [1, 7, 33, 100, 129]
BLOCKS = [
    pytest.param(1, 1, id="1x1"),
    pytest.param(4, 4, id="4x4"),
    pytest.param(8, 16, id="8x16"),
    pytest.param(16, 8, id="16x8"),
    pytest.param(5, 3, id="5x3"),
    pytest.param(128, 128, id="128x128"),
    pytest.param(200, 150, id="bq_gt_n"),
]


@pytest.mark.parametrize("bq, bk", BLOCKS)
@pytest.mark.parametrize("n", SIZES, ids=[f"n{n}" for n in SIZES])
@pytest.mark.parametrize("name, make_args",
                         [pytest.param(name, args, id=i) for i, name, args in PRIMITIVES])
def test_primitive_matches_oracle(name, make_args, n, bq, bk):
    args = make_args(n)
    cp = patternc.compile(text_of(name, args), n, block=(bq, bk))
    check_against(cp, dense(name, args, n, bq, bk), bq, bk)


def test_oracle_table_covers_every_primitive():
    from patternc.primitives import PRIMITIVES as ENTRIES

    assert {name for _, name, _ in PRIMITIVES} == set(ENTRIES)


# ---- degenerate compositions: empty operands, empty results --------------------------------------

_Z = np.zeros((33, 33), bool)
_CAUSAL = np.tril(np.ones((33, 33), bool))


@pytest.mark.parametrize("expr, want", [
    pytest.param("none | none", _Z, id="none_or_none"),
    pytest.param("(causal - causal) | (window(2) & none)", _Z, id="empty_or_empty"),
    pytest.param("none | causal", _CAUSAL, id="none_or_causal"),
    pytest.param("causal | none", _CAUSAL, id="causal_or_none"),
    pytest.param("~(all | none)", _Z, id="not_all"),
    pytest.param("none - all", _Z, id="none_minus_all"),
    pytest.param("none & ~none", _Z, id="none_and_all"),
    pytest.param("~none & causal", _CAUSAL, id="not_none_and_causal"),
    pytest.param("~(~causal | none)", _CAUSAL, id="nested_complement"),
])
@pytest.mark.parametrize("bq, bk", [(1, 1), (4, 8), (40, 40)])
def test_degenerate_compositions(expr, want, bq, bk):
    check_against(patternc.compile(expr, 33, block=(bq, bk)), want, bq, bk)


# ---- blocks the children's kinds cannot decide ---------------------------------------------------
# PARTIAL | PARTIAL may be FULL, PARTIAL & PARTIAL and PARTIAL - PARTIAL may be EMPTY. Each
# combinator meets them both when it enumerates its own blocks and when an enclosing node classifies
# it (inside a complement, on the classified side of an intersection or difference).

_N = 36
_S2 = dense("stride", (2,), _N, 1, 1)
_S3 = dense("stride", (3,), _N, 1, 1)
_CAUSAL36 = dense("causal", (), _N, 1, 1)
_ALL36, _NONE36 = np.ones((_N, _N), bool), np.zeros((_N, _N), bool)


@pytest.mark.parametrize("expr, want", [
    pytest.param("stride(2) | ~stride(2)", _ALL36, id="union_enumerated"),
    pytest.param("band(-5, 0) | band(1, 5)", dense("window", (6,), _N, 1, 1), id="union_bands"),
    pytest.param("~(stride(2) | ~stride(2))", _NONE36, id="union_in_complement"),
    pytest.param("causal & (stride(2) | ~stride(2))", _CAUSAL36, id="union_classified_by_and"),
    pytest.param("causal - (stride(2) | ~stride(2))", _NONE36, id="union_classified_by_minus"),
    pytest.param("stride(2) & ~stride(2)", _NONE36, id="intersect_enumerated"),
    pytest.param("stride(2) & stride(3)", _S2 & _S3, id="intersect_partial"),
    pytest.param("~(stride(2) & ~stride(2))", _ALL36, id="intersect_in_complement"),
    pytest.param("causal - (stride(2) & ~stride(2))", _CAUSAL36, id="intersect_classified"),
    pytest.param("window(5) - band(-4, 4)", _NONE36, id="difference_enumerated"),
    pytest.param("~(window(5) - band(-4, 4))", _ALL36, id="difference_in_complement"),
    pytest.param("causal - (stride(2) - ~~stride(2))", _CAUSAL36, id="difference_classified"),
    pytest.param("causal & ~(stride(3) - stride(3))", _CAUSAL36, id="difference_double"),
])
@pytest.mark.parametrize("bq, bk", [(1, 1), (4, 4), (3, 5), (8, 16)])
def test_undecided_blocks_are_settled_exactly(expr, want, bq, bk):
    check_against(patternc.compile(expr, _N, block=(bq, bk)), want, bq, bk)


# ---- off-by-one conventions ----------------------------------------------------------------------


@pytest.mark.parametrize("w", [1, 2, 5, 16, 17])
@pytest.mark.parametrize("block", [pytest.param(4, id="b4"), pytest.param((3, 8), id="b3x8")])
def test_causal_window_sees_exactly_w_keys(w, block):
    n = 61
    per_row = patternc.compile(f"causal & window({w})", n, block=block).to_dense(0, 0).sum(axis=1)
    q = np.arange(n)
    np.testing.assert_array_equal(per_row[q >= w - 1], w)
    np.testing.assert_array_equal(per_row[q < w - 1], q[q < w - 1] + 1)


def test_window_is_symmetric_and_strict():
    m = patternc.compile("window(3)", 10, block=4).to_dense(0, 0)
    assert m[5, 3] and m[5, 7] and not m[5, 2] and not m[5, 8]
    np.testing.assert_array_equal(m, m.T)


def test_band_bounds_are_inclusive():
    m = patternc.compile("band(-1, 2)", 10, block=4).to_dense(0, 0)
    assert m[5, 6] and m[5, 3] and not m[5, 7] and not m[5, 2]


def test_fixed_summary_columns_are_the_last_s_of_each_chunk():
    m = patternc.compile("fixed(4, 1)", 12, block=4).to_dense(0, 0)
    # query 9 (chunk 2) sees its own chunk 8..11 and the summaries 3 and 7
    assert set(np.flatnonzero(m[9])) == {3, 7, 8, 9, 10, 11}


# ---- random compositions (hypothesis) ------------------------------------------------------------


def _primitive(draw, n):
    name = draw(st.sampled_from(["all", "none", "causal", "window", "band", "dilated", "stride",
                                 "fixed", "chunk", "sink", "global", "tokens", "columns",
                                 "diagonals", "prefix", "random", "neighborhood", "documents"]))
    count = st.integers(1, n + 3)
    match name:
        case "all" | "none" | "causal":
            args = ()
        case "window" | "stride" | "chunk" | "sink" | "global" | "prefix":
            args = (draw(count),)
        case "band":
            lo = draw(st.integers(-n - 2, n + 2))
            args = (lo, draw(st.integers(lo, n + 3)))
        case "dilated":
            args = (draw(st.integers(1, 6)), draw(count))
        case "fixed":
            c = draw(count)
            args = (c, draw(st.integers(1, c)))
        case "tokens" | "columns" | "documents":
            args = (draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4)),)
        case "diagonals":
            args = (draw(st.lists(st.integers(1 - n, n - 1), min_size=1, max_size=4)),)
        case "random":
            args = (draw(st.integers(1, 5)), draw(st.integers(0, 1000)))
        case "neighborhood":
            size = []
            for _ in range(draw(st.integers(1, 3))):  # each axis within what the others leave of n
                size.append(draw(st.integers(1, max(1, min(6, n // int(np.prod(size)))))))
            args = (size, draw(st.lists(st.integers(1, 6), min_size=len(size), max_size=len(size))))
    return name, args


def _expression(draw, n, bq, bk, depth):
    """(text, dense) of a random expression; every composite is parenthesised."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        name, args = _primitive(draw, n)
        return text_of(name, args), dense(name, args, n, bq, bk)
    op = draw(st.sampled_from(["|", "&", "-", "~"]))
    a_text, a = _expression(draw, n, bq, bk, depth - 1)
    if op == "~":
        return f"~({a_text})", ~a
    b_text, b = _expression(draw, n, bq, bk, depth - 1)
    value = {"|": a | b, "&": a & b, "-": a & ~b}[op]
    return f"({a_text}) {op} ({b_text})", value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_compositions_match_oracle(data):
    n = data.draw(st.integers(1, 80), label="n")
    bq = data.draw(st.sampled_from([1, 2, 3, 4, 5, 8, 16, 100]), label="bq")
    bk = data.draw(st.sampled_from([1, 2, 3, 4, 7, 8, 16, 100]), label="bk")
    text, want = _expression(data.draw, n, bq, bk, depth=4)
    data.draw(st.just(text), label="expression")
    check_against(patternc.compile(text, n, block=(bq, bk)), want, bq, bk)


# ---- random's draw -------------------------------------------------------------------------------


@pytest.mark.parametrize("r, nbq, nbk",
                         [(1, 9, 1), (3, 40, 3), (3, 40, 10), (5, 7, 64), (8, 100, 9)])
def test_random_table_rows_are_distinct_sorted_in_range(r, nbq, nbk):
    table = random_block_table(3, 1, 2, r, nbq, nbk)
    assert table.shape == (nbq, r) and table.dtype == np.int64
    assert np.all(np.diff(table, axis=1) > 0)  # sorted and distinct
    assert table.min() >= 0 and table.max() < nbk


def test_random_table_is_deterministic_and_keyed():
    base = random_block_table(7, 0, 0, 4, 64, 50).copy()
    np.testing.assert_array_equal(random_block_table.__wrapped__(7, 0, 0, 4, 64, 50), base)
    for other in [(8, 0, 0), (7, 1, 0), (7, 0, 1)]:  # seed, layer, head
        assert not np.array_equal(random_block_table(*other, 4, 64, 50), base), other
    # each row depends on (seed, layer, head, row) only: more rows extend, never reshuffle
    np.testing.assert_array_equal(random_block_table(7, 0, 0, 4, 80, 50)[:64], base)


def test_random_table_is_roughly_uniform():
    table = random_block_table(0, 0, 0, 3, 4000, 10)
    counts = np.bincount(table.ravel(), minlength=10)
    assert counts.min() > 1000 and counts.max() < 1400, counts  # expected 1200 each


def test_random_clamps_r_to_the_key_blocks():
    cp = patternc.compile("random(50, seed=3)", 20, block=8)  # 3 key blocks
    assert np.all(cp.to_dense(0, 0))


def test_random_differs_across_heads_in_a_stack():
    stack = patternc.Stack(default="random(2, seed=1)", layers=2, heads=2)
    cp = patternc.compile(stack, 256, block=16)
    kinds = {(l, h): stored_kinds(cp, l, h).tobytes() for l in range(2) for h in range(2)}
    assert len(set(kinds.values())) == 4
    for (l, h) in kinds:
        check_against(cp, dense("random", (2, 1), 256, 16, 16, layer=l, head=h), 16, 16, l, h)


# ---- nothing evaluates the n x n grid ------------------------------------------------------------


def _band_block_counts(lo, hi, n, b):
    """Non-empty and FULL blocks of band(lo, hi) on an n-divisible square grid of block b.

    Block (i, j) holds the offsets b * s - (b - 1) ... b * s + (b - 1), s = i - j, each of them; it
    is non-empty when that range meets [lo, hi] and FULL when it lies inside.
    """
    nb = n // b
    i = np.arange(nb)

    def count(s_lo, s_hi):  # blocks per row with s_lo <= i - j <= s_hi and 0 <= j < nb
        return int(np.maximum(np.minimum(s_hi, i) - np.maximum(s_lo, i - nb + 1) + 1, 0).sum())

    nonempty = count(-((b - 1 - lo) // b), (hi + b - 1) // b)  # ceil((lo - b + 1) / b), floor(..)
    full = count(-((-lo - b + 1) // b), (hi - b + 1) // b)
    return nonempty, full


@pytest.mark.parametrize("lo, hi", [(0, 15), (-7, 20), (3, 3), (-40, -9), (0, 63)])
def test_band_block_count_helper(lo, hi):
    n, b = 64, 8
    kinds = block_kinds(dense("band", (lo, hi), n, b, b), b, b)
    assert _band_block_counts(lo, hi, n, b) == ((kinds != EMPTY).sum(), (kinds == FULL).sum())


def test_causal_window_at_a_million_tokens_is_analytic():
    n, w, b = 2**20, 4096, 128
    cp = patternc.compile(f"causal & window({w})", n, block=b)
    nnz, full = _band_block_counts(0, w - 1, n, b)
    assert nnz == 8192 * 33 - 32 * 33 // 2  # rows see min(i, 32) + 1 blocks
    assert full == 8192 * 31 - 31 * 32 // 2  # offsets 1..31 blocks back are FULL
    s = cp.stats().per_head[0]
    assert (s.nnz, s.full_blocks) == (nnz, full)
    q = np.arange(n, dtype=np.int64)
    assert s.allowed_pairs == int(np.minimum(q + 1, w).sum())
    assert s.waste_blocks == 0


# closed-form counts of allowed pairs at n = 100_000, block 128; each is a sum over q at most
N = 100_000
_Q = np.arange(N, dtype=np.int64)


def _band_pairs(lo, hi):
    return int(np.maximum(np.minimum(_Q - lo, N - 1) - np.maximum(_Q - hi, 0) + 1, 0).sum())


def _fixed_pairs(c, s):
    own = np.minimum((_Q // c + 1) * c, N) - (_Q // c) * c  # keys in q's chunk
    summary_total = (N // c) * s + max(N % c - (c - s), 0)
    start, stop = (_Q // c) * c, np.minimum((_Q // c + 1) * c, N)
    summary_own = np.maximum(stop - np.maximum(start + c - s, start), 0)
    return int((own + summary_total - summary_own).sum())


LARGE = [
    pytest.param("causal", N * (N + 1) // 2, id="causal"),
    pytest.param("window(1000)", _band_pairs(-999, 999), id="window"),
    pytest.param("causal & window(777)", int(np.minimum(_Q + 1, 777).sum()), id="causal_window"),
    pytest.param("band(-5, 300)", _band_pairs(-5, 300), id="band"),
    pytest.param("stride(64)", int(((N - 1 - _Q % 64) // 64 + 1).sum()), id="stride"),
    pytest.param("dilated(100, 3)", int((np.minimum(_Q // 3, 99) + np.minimum((N - 1 - _Q) // 3, 99)
                                         + 1).sum()), id="dilated"),
    pytest.param("chunk(1000)", 100 * 1000**2, id="chunk"),
    pytest.param("chunk(333)", (N // 333) * 333**2 + (N % 333) ** 2, id="chunk_ragged"),
    pytest.param("fixed(256, 16)", _fixed_pairs(256, 16), id="fixed"),
    pytest.param("sink(100)", N * 100, id="sink"),
    pytest.param("global(100)", 2 * N * 100 - 100 * 100, id="global"),
    pytest.param("prefix(3000)", 3000**2, id="prefix"),
    pytest.param("tokens([5, 500, 99999])", 2 * 3 * N - 9, id="tokens"),
    pytest.param("columns([5, 500, 99999])", 3 * N, id="columns"),
    pytest.param("diagonals([0, -7, 1000])", 3 * N - 7 - 1000, id="diagonals"),
    pytest.param("causal - window(500)", N * (N + 1) // 2 - int(np.minimum(_Q + 1, 500).sum()),
                 id="difference"),
    pytest.param("~window(500)", N * N - _band_pairs(-499, 499), id="complement"),
]


@pytest.mark.parametrize("expr, pairs", LARGE)
def test_allowed_pairs_at_large_n(expr, pairs):
    s = patternc.compile(expr, N, block=128).stats().per_head[0]
    assert s.allowed_pairs == pairs
    assert s.waste_blocks == 0


def test_random_allowed_pairs_at_large_n():
    n, b, r = N, 128, 3
    nb = -(-n // b)
    table = random_block_table(4, 0, 0, r, nb, nb)
    width = np.minimum((np.arange(nb) + 1) * b, n) - np.arange(nb) * b  # last block is short
    want = int((width[:, None] * width[table]).sum())
    s = patternc.compile("random(3, seed=4)", n, block=b).stats().per_head[0]
    assert s.allowed_pairs == want
