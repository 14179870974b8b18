"""Tables of expressions that must mean the same thing, hence compile to the same layout.

Each identity follows from the definitions in docs/language.md (the comment gives the reason where it is not
plain set algebra). Both sides must give equal CSR arrays (indptr, indices, full) and equal dense
masks, at several lengths and block shapes, ragged ones included.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import patternc

SHAPES = [
    pytest.param(37, (4, 4), id="n37-4x4"),
    pytest.param(64, (8, 16), id="n64-8x16"),
    pytest.param(100, (16, 8), id="n100-16x8"),
    pytest.param(61, (5, 3), id="n61-5x3"),
]


def assert_same(left, right, n, block, params=None, right_params=None):
    a = patternc.compile(left, n, block=block, params=params)
    b = patternc.compile(right, n, block=block, params=right_params)
    for name, x, y in zip(("indptr", "indices", "full"), a.layout(), b.layout(), strict=True):
        np.testing.assert_array_equal(x, y, err_msg=f"{name}: {left!r} vs {right!r}")
    if n <= 2000:  # the layouts are exact (test_lowering_oracle); dense is a cheap extra check
        np.testing.assert_array_equal(a.to_dense(0, 0), b.to_dense(0, 0))


# ---- identities of the algebra, over several choices of operands ---------------------------------

OPERANDS = [
    pytest.param(("causal & window(5)", "global(3) | stride(4)", "random(2, seed=1)"), id="ops1"),
    pytest.param(("tokens([2, 9])", "~chunk(6)", "dilated(3, 2) - diagonals([0])"), id="ops2"),
    pytest.param(("fixed(8, 2)", "band(-4, 9)", "prefix(12) | columns([0, 30])"), id="ops3"),
]

ALGEBRA = [
    pytest.param("~~A", "A", id="double_complement"),
    pytest.param("A - B", "A & ~B", id="difference_is_and_not"),
    pytest.param("A - B", "A - (A & B)", id="difference_of_overlap"),
    pytest.param("~(A | B)", "~A & ~B", id="de_morgan_or"),
    pytest.param("~(A & B)", "~A | ~B", id="de_morgan_and"),
    pytest.param("A | none", "A", id="union_identity"),
    pytest.param("A & all", "A", id="intersection_identity"),
    pytest.param("A | A", "A", id="union_idempotent"),
    pytest.param("A & A", "A", id="intersection_idempotent"),
    pytest.param("A - A", "none", id="self_difference"),
    pytest.param("A & none", "none", id="intersection_absorbing"),
    pytest.param("A | all", "all", id="union_absorbing"),
    pytest.param("A | ~A", "all", id="excluded_middle"),
    pytest.param("A & ~A", "none", id="non_contradiction"),
    pytest.param("A | B", "B | A", id="union_commutes"),
    pytest.param("A & B", "B & A", id="intersection_commutes"),
    pytest.param("(A | B) | C", "A | (B | C)", id="union_associates"),
    pytest.param("(A & B) & C", "A & (B & C)", id="intersection_associates"),
    pytest.param("A & (B | C)", "(A & B) | (A & C)", id="and_distributes"),
    pytest.param("A | (B & C)", "(A | B) & (A | C)", id="or_distributes"),
    pytest.param("(A | B) - C", "(A - C) | (B - C)", id="difference_distributes"),
    pytest.param("A | (A & B)", "A", id="absorption"),
    # precedence: & binds tighter than | and -
    pytest.param("A | B & C", "A | (B & C)", id="precedence_or_and"),
    pytest.param("A - B & C", "A - (B & C)", id="precedence_minus_and"),
    pytest.param("A & B | C", "(A & B) | C", id="precedence_and_or"),
]


@pytest.mark.parametrize("n, block", SHAPES)
@pytest.mark.parametrize("operands", OPERANDS)
@pytest.mark.parametrize("left, right", ALGEBRA)
def test_algebraic_identities(left, right, operands, n, block):
    def fill(template):
        for name, expr in zip("ABC", operands, strict=True):
            template = template.replace(name, f"({expr})")
        return template

    assert_same(fill(left), fill(right), n, block)


# ---- identities between primitives ---------------------------------------------------------------

PRIMITIVES = [
    # causal is q - k >= 0, window(w) is |q - k| < w: together 0 <= q - k <= w - 1
    pytest.param("causal & window(6)", "band(0, 5)", id="causal_window_is_band"),
    pytest.param("window(6)", "band(-5, 5)", id="window_is_band"),
    pytest.param("window(1)", "band(0, 0)", id="window1_is_diagonal"),
    pytest.param("causal | ~causal", "all", id="causal_or_not_causal"),
    pytest.param("~causal", "band(-n, -1)", id="not_causal_is_future_band"),
    pytest.param("causal - band(0, 4)", "band(5, n)", id="causal_minus_band"),
    pytest.param("stride(1)", "all", id="stride1_is_all"),
    pytest.param("chunk(n)", "all", id="chunk_n_is_all"),
    pytest.param("chunk(1)", "diagonals([0])", id="chunk1_is_diagonal"),
    pytest.param("window(n)", "all", id="window_n_is_all"),
    pytest.param("window(10**9)", "all", id="huge_window_is_all"),
    pytest.param("dilated(4, 1)", "window(4)", id="dilated_by_1_is_window"),
    # multiples of d with |q - k| < w * d are exactly those with |q - k| <= (w - 1) * d
    pytest.param("dilated(3, 4)", "stride(4) & window(9)", id="dilated_is_stride_and_window"),
    pytest.param("columns([0, 1, 2, 3])", "sink(4)", id="columns_prefix_is_sink"),
    pytest.param("tokens([0, 1, 2, 3])", "global(4)", id="tokens_prefix_is_global"),
    pytest.param("tokens([3, 9])", "columns([3, 9]) | ~~tokens([9, 3])", id="tokens_unordered"),
    pytest.param("columns([5, 5, 2])", "columns([2, 5])", id="columns_duplicates"),
    pytest.param("fixed(5, 5)", "all", id="fixed_all_summaries_is_all"),
    pytest.param("fixed(6, 2)", "chunk(6) | (fixed(6, 2) - chunk(6))", id="fixed_contains_chunk"),
    pytest.param("diagonals([0])", "band(0, 0)", id="diagonal0_is_band"),
    pytest.param("diagonals([-2, -1, 0, 1])", "band(-2, 1)", id="diagonals_run_is_band"),
    pytest.param("prefix(9)", "chunk(9) & sink(9)", id="prefix_is_chunk_and_sink"),
    pytest.param("prefix(9) & causal", "chunk(9) & causal & sink(9)", id="causal_prefix"),
    pytest.param("sink(3) | window(4)", "window(4) | columns([0, 1, 2])", id="sink_or_window"),
    pytest.param("window(3) & window(7)", "window(3)", id="window_min"),
    pytest.param("window(3) | window(7)", "window(7)", id="window_max"),
    pytest.param("band(-3, 2) | band(3, 8)", "band(-3, 8)", id="adjacent_bands"),
    pytest.param("band(-3, 5) & band(2, 8)", "band(2, 5)", id="overlapping_bands"),
    pytest.param("random(1000, seed=2)", "all", id="random_clamped_is_all"),
    pytest.param("random(2, 5)", "random(r=2, seed=5)", id="random_named_args"),
    pytest.param("random(2)", "random(2, seed=0)", id="random_default_seed"),
    pytest.param("~all", "none", id="not_all"),
]


@pytest.mark.parametrize("n, block", SHAPES)
@pytest.mark.parametrize("left, right", PRIMITIVES)
def test_primitive_identities(left, right, n, block):
    assert_same(left, right, n, block)


@pytest.mark.parametrize("n, block", SHAPES)
def test_identities_with_n_written_out(n, block):
    """Identities whose right side names positions up to n, written as literals."""
    assert_same(f"chunk({n})", "all", n, block)
    assert_same("stride(7)", f"diagonals([{', '.join(map(str, _multiples(7, n)))}])", n, block)
    summaries = ", ".join(str(k) for k in range(n) if k % 4 == 3)
    assert_same("fixed(4, 1)", f"chunk(4) | columns([{summaries}])", n, block)
    assert_same(f"tokens([{n - 1}])", "tokens([n - 1])", n, block)


def _multiples(s, n):
    """The multiples of s in (-n, n): the offsets stride(s) allows."""
    return range(-((n - 1) // s * s), n, s)


def test_multiples_helper():
    assert list(_multiples(7, 37)) == [-35, -28, -21, -14, -7, 0, 7, 14, 21, 28, 35]
    assert list(_multiples(7, 36)) == [-35, -28, -21, -14, -7, 0, 7, 14, 21, 28, 35]
    assert list(_multiples(7, 35)) == [-28, -21, -14, -7, 0, 7, 14, 21, 28]


def test_different_patterns_do_differ():
    """The comparison can fail: near-identities that are off by one are told apart."""
    for left, right in [("causal & window(6)", "band(0, 6)"), ("window(6)", "band(-6, 5)"),
                        ("dilated(3, 4)", "stride(4) & window(8)"), ("prefix(9)", "sink(9)"),
                        ("random(2, seed=5)", "random(2, seed=6)")]:
        with pytest.raises(AssertionError):
            assert_same(left, right, 61, (5, 3))


# ---- the same pattern through different syntax ---------------------------------------------------

SYNTAX = [
    pytest.param("window(2**9)", "window(512)", 2000, None, id="power"),
    pytest.param("window(round(sqrt(n)))", "window(128)", 16384, None, id="sqrt_n"),
    pytest.param("stride(log2(n))", "stride(10)", 1024, None, id="log2_n"),
    pytest.param("window(ceil(n / 3))", "window(34)", 100, None, id="ceil_division"),
    pytest.param("window(n // 3 + 1)", "window(34)", 100, None, id="floor_division"),
    pytest.param("window(min(50, n // 4, 70))", "window(25)", 100, None, id="min"),
    pytest.param("sink(max(2, 3) * 2)", "sink(6)", 100, None, id="max"),
    pytest.param("window(w=64)", "window(64)", 1000, None, id="named_arg"),
    pytest.param("band(hi=2, lo=-3)", "band(-3, 2)", 100, None, id="named_args_reordered"),
    pytest.param("window($w)", "window(64)", 1000, {"w": 64}, id="param"),
    pytest.param("window(2 * $w)", "window(128)", 1000, {"w": 64}, id="param_arithmetic"),
    pytest.param("window(round($f * n))", "window(250)", 1000, {"f": 0.25}, id="param_fraction"),
    pytest.param("causal&window(8)", "  causal   &   window( 8 )  ", 100, None, id="whitespace"),
    pytest.param("((causal)) & (window(8))", "causal & window(8)", 100, None, id="parentheses"),
]


@pytest.mark.parametrize("block", [pytest.param(16, id="b16"), pytest.param((32, 8), id="b32x8")])
@pytest.mark.parametrize("left, right, n, params", SYNTAX)
def test_same_pattern_through_different_syntax(left, right, n, params, block):
    assert_same(left, right, n, block, params=params)


def test_same_pattern_from_an_ast_and_from_text():
    text = "causal & (window(9) | global(2)) - diagonals([3])"
    a = patternc.compile(patternc.parse(text), 50, block=4)
    patternc.compiled.clear_cache()  # two compiles, not one cached object compared with itself
    b = patternc.compile(text, 50, block=4)
    assert a is not b
    np.testing.assert_array_equal(a.to_dense(), b.to_dense())
    for x, y in zip(a.layout(), b.layout(), strict=True):
        np.testing.assert_array_equal(x, y)


# ---- laws on random operands (hypothesis) -------------------------------------------------------

POOL = ["causal", "window(3)", "band(-2, 6)", "dilated(3, 4)", "stride(5)", "fixed(6, 2)",
        "chunk(7)", "sink(4)", "global(2)", "tokens([0, 5])", "columns([1, 2, 9])",
        "diagonals([0, -3, 8])", "prefix(9)", "random(2, seed=1)", "all", "none"]


def _kinds(cp):
    """{(row, col): is_full} of the stored blocks."""
    indptr, indices, full = cp.layout()
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return {(int(i), int(j)): bool(f) for i, j, f in zip(rows, indices, full, strict=True)}


@st.composite
def _operand(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(POOL))
    op = draw(st.sampled_from(["|", "&", "-", "~"]))
    if op == "~":
        return f"~({draw(_operand(depth - 1))})"
    return f"({draw(_operand(depth - 1))}) {op} ({draw(_operand(depth - 1))})"


@settings(max_examples=100, deadline=None)
@given(a=_operand(), b=_operand(), n=st.integers(10, 70),
       block=st.sampled_from([(1, 1), (4, 4), (3, 5), (8, 2), (16, 16)]))
def test_block_level_laws(a, b, n, block):
    def kinds(text):
        return _kinds(patternc.compile(text, n, block=block))

    A, B = kinds(a), kinds(b)
    AND, OR, NOT = kinds(f"({a}) & ({b})"), kinds(f"({a}) | ({b})"), kinds(f"~({a})")
    full = {name: {x for x, f in blocks.items() if f}
            for name, blocks in (("A", A), ("B", B), ("AND", AND), ("OR", OR), ("NOT", NOT))}
    # A & B never touches a block A does not, and is FULL only where both are
    assert AND.keys() <= A.keys() & B.keys()
    assert full["AND"] == full["A"] & full["B"]
    # A | B touches exactly the blocks of either, and is FULL at least where one of them is
    assert OR.keys() == A.keys() | B.keys()
    assert full["OR"] >= full["A"] | full["B"]
    # ~A stores every block A does not fill, and fills every block A does not touch
    nbq, nbk = -(-n // block[0]), -(-n // block[1])
    every = {(i, j) for i in range(nbq) for j in range(nbk)}
    assert NOT.keys() == every - full["A"]
    assert full["NOT"] == every - A.keys()
    # (A - B) | (A & B) is A again
    assert_same(f"(({a}) - ({b})) | (({a}) & ({b}))", a, n, block)
