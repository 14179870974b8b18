"""Parsing, canonical text, round trips and numeric evaluation of the pattern language.

Tables pin the canonical text (``unparse``) and the precedence rules of docs/language.md; hypothesis
builds syntax trees from the signature table and checks ``parse(unparse(t)) == t``; numeric
arguments are checked through ``compile`` against the layout of the literal they evaluate to.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import patternc
from patternc import ast, parse, unparse
from patternc.lang.check import FUNCTIONS, NAMES
from patternc.lang.tokens import tokenize
from patternc.primitives import PRIMITIVES

P = ast.Primitive
N = ast.Num


def W(arg):  # window(arg), the usual carrier of a numeric argument
    return P("window", (arg,))


def B(op, left, right):
    return ast.Binary(op, left, right)


# ---- canonical text ------------------------------------------------------------------------------

CANONICAL = [
    pytest.param("causal&(window( 512 )|global(4))", "causal & (window(512) | global(4))",
                 id="docstring-example"),
    pytest.param("  causal  ", "causal", id="spaces"),
    pytest.param("(causal)", "causal", id="redundant-group"),
    pytest.param("((window(4)))", "window(4)", id="double-group"),
    pytest.param("causal | (window(4) & sink(2))", "causal | window(4) & sink(2)",
                 id="and-inside-or-drops-parens"),
    pytest.param("(causal | window(4)) & sink(2)", "(causal | window(4)) & sink(2)",
                 id="or-inside-and-keeps-parens"),
    pytest.param("(causal - window(4)) | sink(2)", "causal - window(4) | sink(2)",
                 id="diff-then-or-left-assoc"),
    pytest.param("causal - (window(4) - sink(2))", "causal - (window(4) - sink(2))",
                 id="diff-right-nested-keeps-parens"),
    pytest.param("causal - (window(4) | sink(2))", "causal - (window(4) | sink(2))",
                 id="or-right-of-diff-keeps-parens"),
    pytest.param("(causal - window(4)) - sink(2)", "causal - window(4) - sink(2)",
                 id="diff-left-nested-drops-parens"),
    pytest.param("causal & (window(4) & sink(2))", "causal & (window(4) & sink(2))",
                 id="and-right-nested-keeps-parens"),
    pytest.param("~(causal | all)", "~(causal | all)", id="complement-of-group"),
    pytest.param("~(~causal)", "~~causal", id="double-complement"),
    pytest.param("(~window(4)) & causal", "~window(4) & causal", id="complement-binds-tightest"),
    pytest.param("random(2,seed=7)", "random(2, seed=7)", id="named-arg"),
    pytest.param("random(seed = 7 , r = 2)", "random(seed=7, r=2)", id="all-named-keep-order"),
    pytest.param("random(3)", "random(3)", id="default-not-printed"),
    pytest.param("tokens([ 0,n-1 ])", "tokens([0, n - 1])", id="list"),
    pytest.param("tokens([])", "tokens([])", id="empty-list"),
    pytest.param("window(-2**2)", "window(-2 ** 2)", id="neg-pow"),
    pytest.param("window(-(2**2))", "window(-2 ** 2)", id="neg-of-group-pow"),
    pytest.param("window((-2)**2)", "window((-2) ** 2)", id="pow-of-neg-keeps-parens"),
    pytest.param("window(2**(-1))", "window(2 ** -1)", id="neg-exponent-no-parens"),
    pytest.param("window(2**3**2)", "window(2 ** 3 ** 2)", id="pow-right-assoc"),
    pytest.param("window((2**3)**2)", "window((2 ** 3) ** 2)", id="pow-left-nested-keeps"),
    pytest.param("window(2**(1+1))", "window(2 ** (1 + 1))", id="sum-exponent-keeps"),
    pytest.param("window((1+2)*3)", "window((1 + 2) * 3)", id="sum-in-product-keeps"),
    pytest.param("window(1+(2*3))", "window(1 + 2 * 3)", id="product-in-sum-drops"),
    pytest.param("window(1-(2-3))", "window(1 - (2 - 3))", id="minus-right-keeps"),
    pytest.param("window((1-2)-3)", "window(1 - 2 - 3)", id="minus-left-drops"),
    pytest.param("window(8/(4/2))", "window(8 / (4 / 2))", id="div-right-keeps"),
    pytest.param("window(8//2%3)", "window(8 // 2 % 3)", id="floordiv-mod"),
    pytest.param("window(- -1)", "window(--1)", id="double-minus"),
    pytest.param("window(-(-1))", "window(--1)", id="minus-of-group-minus"),
    pytest.param("window(+n)", "window(+n)", id="unary-plus"),
    pytest.param("window(-n*2)", "window(-n * 2)", id="unary-in-product"),
    pytest.param("window((-n)*2)", "window(-n * 2)", id="unary-group-in-product"),
    pytest.param("window(-(n*2))", "window(-(n * 2))", id="unary-of-product-keeps"),
    pytest.param("window(2*-n)", "window(2 * -n)", id="unary-right-of-product"),
    pytest.param("window(min(n,4,l))", "window(min(n, 4, l))", id="call"),
    pytest.param("window( $w*2 )", "window($w * 2)", id="param"),
    pytest.param("window(0.5*n)", "window(0.5 * n)", id="float"),
    pytest.param("window(1e3)", "window(1000.0)", id="exponent-literal"),
    pytest.param("window(.5)", "window(0.5)", id="leading-dot"),
    pytest.param("window(1E-3)", "window(0.001)", id="capital-e"),
    pytest.param("window(1.)", "window(1.0)", id="trailing-dot"),
    pytest.param("window(007)", "window(7)", id="leading-zeros"),
    pytest.param("window(1e16)", "window(1e+16)", id="float-repr-with-exponent"),
    pytest.param("causal &\n  window(4)\n", "causal & window(4)", id="multi-line"),
    pytest.param("causal\t&\twindow(4)", "causal & window(4)", id="tabs"),
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_canonical_unparse(text, canonical):
    tree = parse(text)
    assert unparse(tree) == canonical
    assert parse(canonical) == tree
    assert unparse(parse(canonical)) == canonical  # canonical text is a fixed point


# ---- precedence and associativity ----------------------------------------------------------------

SAME = [
    pytest.param("causal | window(4) & sink(2)", "causal | (window(4) & sink(2))",
                 id="and-over-or"),
    pytest.param("causal & window(4) | sink(2)", "(causal & window(4)) | sink(2)",
                 id="and-over-or-2"),
    pytest.param("causal - window(4) & sink(2)", "causal - (window(4) & sink(2))",
                 id="and-over-diff"),
    pytest.param("causal - window(4) | sink(2)", "(causal - window(4)) | sink(2)",
                 id="diff-or-left"),
    pytest.param("causal | window(4) - sink(2)", "(causal | window(4)) - sink(2)",
                 id="or-diff-left"),
    pytest.param("all - causal - sink(2)", "(all - causal) - sink(2)", id="diff-left-assoc"),
    pytest.param("all | causal | sink(2)", "(all | causal) | sink(2)", id="or-left-assoc"),
    pytest.param("all & causal & sink(2)", "(all & causal) & sink(2)", id="and-left-assoc"),
    pytest.param("~causal & all", "(~causal) & all", id="complement-tighter-than-and"),
    pytest.param("~~causal", "~(~causal)", id="complement-nests"),
    pytest.param("window(1 + 2 * 3)", "window(1 + (2 * 3))", id="mul-over-add"),
    pytest.param("window(10 - 2 - 3)", "window((10 - 2) - 3)", id="sub-left-assoc"),
    pytest.param("window(64 / 4 / 2)", "window((64 / 4) / 2)", id="div-left-assoc"),
    pytest.param("window(2 ** 3 ** 2)", "window(2 ** (3 ** 2))", id="pow-right-assoc"),
    pytest.param("window(-2 ** 2)", "window(-(2 ** 2))", id="pow-over-unary-minus"),
    pytest.param("window(2 * 3 ** 2)", "window(2 * (3 ** 2))", id="pow-over-mul"),
    pytest.param("window(2 ** -1)", "window(2 ** (-1))", id="signed-exponent"),
    pytest.param("window(-n % 7)", "window((-n) % 7)", id="unary-over-mod"),
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_precedence_same_tree(a, b):
    assert parse(a) == parse(b)


DIFFERENT = [
    pytest.param("causal | window(4) & sink(2)", "(causal | window(4)) & sink(2)", id="or-and"),
    pytest.param("all - causal - sink(2)", "all - (causal - sink(2))", id="diff-assoc"),
    pytest.param("causal - window(4) | sink(2)", "causal - (window(4) | sink(2))", id="diff-or"),
    pytest.param("~causal & all", "~(causal & all)", id="complement-scope"),
    pytest.param("window(2 ** 3 ** 2)", "window((2 ** 3) ** 2)", id="pow-assoc"),
    pytest.param("window(-2 ** 2)", "window((-2) ** 2)", id="neg-pow"),
    pytest.param("window(10 - 2 - 3)", "window(10 - (2 - 3))", id="sub-assoc"),
    pytest.param("random(2, seed=7)", "random(seed=7, r=2)", id="named-vs-positional"),
]


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_precedence_different_tree(a, b):
    assert parse(a) != parse(b)


TREES = [
    pytest.param("causal - window(4) | sink(2)",
                 ast.Union(ast.Difference(P("causal"), W(N(4))), P("sink", (N(2),))),
                 id="diff-then-union"),
    pytest.param("causal | window(4) - sink(2)",
                 ast.Difference(ast.Union(P("causal"), W(N(4))), P("sink", (N(2),))),
                 id="union-then-diff"),
    pytest.param("~causal & all", ast.Intersect(ast.Complement(P("causal")), P("all")),
                 id="complement-and"),
    pytest.param("window(-2**2)", W(ast.Unary("-", B("**", N(2), N(2)))), id="unary-of-pow"),
    pytest.param("window(2**-1)", W(B("**", N(2), ast.Unary("-", N(1)))), id="pow-of-unary"),
    pytest.param("window(2**3**2)", W(B("**", N(2), B("**", N(3), N(2)))), id="pow-right"),
    pytest.param("window(1-2-3)", W(B("-", B("-", N(1), N(2)), N(3))), id="minus-left"),
    pytest.param("window(n // 2 % 3)", W(B("%", B("//", ast.Name("n"), N(2)), N(3))),
                 id="floordiv-mod-left"),
    pytest.param("window(max($w, sqrt(n)))",
                 W(ast.Call("max", (ast.Param("w"), ast.Call("sqrt", (ast.Name("n"),))))),
                 id="calls-and-param"),
    pytest.param("random(2, seed=7)", P("random", (N(2),), (("seed", N(7)),)), id="kwargs"),
    pytest.param("tokens([0, n - 1])",
                 P("tokens", (ast.ListArg((N(0), B("-", ast.Name("n"), N(1)))),)), id="list"),
    pytest.param("window(0.5)", W(N(0.5)), id="float-literal"),
]


@pytest.mark.parametrize(("text", "tree"), TREES)
def test_exact_tree(text, tree):
    assert parse(text) == tree


def test_number_literal_types():
    assert type(parse("window(512)").args[0].value) is int
    assert type(parse("window(512.0)").args[0].value) is float
    assert type(parse("window(5e2)").args[0].value) is float


# ---- spans ---------------------------------------------------------------------------------------


def test_spans_are_excluded_from_equality_and_hash():
    a, b = parse("causal|window(4)"), parse("  causal   |\n window( 4 )")
    assert a == b
    assert hash(a) == hash(b)
    assert a.span != b.span
    assert a.left.span == (0, 6)
    assert b.left.span == (2, 8)


def test_spans_point_at_source():
    text = "causal & (window(512) | global(4))"
    tree = parse(text)
    assert text[slice(*tree.span)] == text
    assert text[slice(*tree.left.span)] == "causal"
    assert text[slice(*tree.right.span)] == "(window(512) | global(4))"  # the group's parentheses
    assert text[slice(*tree.right.left.span)] == "window(512)"
    assert text[slice(*tree.right.left.args[0].span)] == "512"


def test_walk_yields_every_node_parents_first():
    tree = parse("causal & window(n + 1)")
    kinds = [type(node).__name__ for node in ast.walk(tree)]
    assert kinds == ["Intersect", "Primitive", "Primitive", "Binary", "Name", "Num"]
    deep = parse(" | ".join(["causal"] * 90))
    assert sum(isinstance(node, ast.Primitive) for node in ast.walk(deep)) == 90


def test_parse_refuses_non_text():
    for value in (None, b"causal", 3, ["causal"]):
        with pytest.raises(patternc.PatternSyntaxError):
            parse(value)


# ---- hypothesis: generated trees -----------------------------------------------------------------

_NUM_OPS = ("+", "-", "*", "/", "//", "%", "**")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,6}"


def _leaves():
    return st.one_of(
        st.integers(0, 10**15).map(ast.Num),
        st.floats(0, 1e300, allow_nan=False, allow_infinity=False).map(ast.Num),
        st.sampled_from(NAMES).map(ast.Name),
        st.from_regex(_IDENT, fullmatch=True).map(ast.Param),
    )


def _calls(children):
    def build(func):
        low, high = FUNCTIONS[func]
        return st.lists(children, min_size=low, max_size=high or low + 2).map(
            lambda args: ast.Call(func, tuple(args)))
    return st.sampled_from(sorted(FUNCTIONS)).flatmap(build)


numbers = st.recursive(
    _leaves(),
    lambda children: st.one_of(
        st.builds(ast.Unary, st.sampled_from("+-"), children),
        st.builds(ast.Binary, st.sampled_from(_NUM_OPS), children, children),
        _calls(children),
    ),
    max_leaves=6,
)
lists = st.lists(numbers, max_size=3).map(lambda items: ast.ListArg(tuple(items)))


@st.composite
def primitives(draw):
    """A primitive with the right arity: a prefix of its parameters positional, the rest named
    in any order, and a trailing parameter with a default sometimes left out."""
    name = draw(st.sampled_from(sorted(PRIMITIVES)))
    spec = list(PRIMITIVES[name].args)
    if spec and spec[-1].default is not None and draw(st.booleans()):
        spec.pop()
    values = [(p.name, draw(lists if p.is_list else numbers)) for p in spec]
    npos = draw(st.integers(0, len(values)))
    named = draw(st.permutations(values[npos:]))
    return ast.Primitive(name, tuple(v for _, v in values[:npos]), tuple(named))


patterns = st.recursive(
    primitives(),
    lambda children: st.one_of(
        st.builds(ast.Union, children, children),
        st.builds(ast.Intersect, children, children),
        st.builds(ast.Difference, children, children),
        st.builds(ast.Complement, children),
    ),
    max_leaves=5,
)


def _depth(node) -> int:
    kids = ast.children(node)
    return 1 + max((_depth(k) for k in kids), default=0)


PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(patterns)
def test_parse_unparse_round_trip(tree):
    assume(_depth(tree) <= 40)
    text = unparse(tree)
    assert parse(text) == tree, text
    assert unparse(parse(text)) == text


@PROPERTY
@given(patterns, st.randoms(use_true_random=False))
def test_whitespace_and_spans_do_not_matter(tree, rng):
    """Any spacing between tokens parses to the same tree, and every node's span re-parses to
    that node (spans point at the node's own text, whatever the spacing)."""
    assume(_depth(tree) <= 40)
    pieces = [tok.text for tok in tokenize(unparse(tree))]
    text = "".join(piece + rng.choice(["", " ", "  ", "\n", "\t "]) for piece in pieces)
    parsed = parse(text)
    assert parsed == tree
    for node in ast.walk(parsed):
        part = text[slice(*node.span)]
        if isinstance(node, (ast.Primitive, ast.Union, ast.Intersect, ast.Difference,
                             ast.Complement)):
            assert parse(part) == node, part
        elif isinstance(node, ast.ListArg):
            assert parse(f"tokens({part})").args[0] == node, part
        else:
            assert parse(f"window({part})").args[0] == node, part


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("causl&|-~() windowglobaktrne0123456789[],=$*/%.+")),
               max_size=40))
def test_unparse_parse_idempotent_on_any_text(text):
    """For any text that parses, its canonical text parses to the same tree and is a fixed point."""
    try:
        tree = parse(text)
    except patternc.PatternError:
        return
    canonical = unparse(tree)
    assert parse(canonical) == tree
    assert unparse(parse(canonical)) == canonical


@pytest.mark.parametrize("text", [
    pytest.param("causal & (window(512) | global(4))", id="readme"),
    pytest.param("causal & (window(128) | global(128) | random(3, seed=0))", id="bigbird"),
    pytest.param("causal & (sink(30) | columns([42, 97]) | window(30) | diagonals([64, 100]))",
                 id="vertical-slash"),
    pytest.param("~(band(-3, 2) - stride(4)) & fixed(8, 2) | chunk(16) - prefix(n // 2)",
                 id="every-operator"),
    pytest.param("window(ceil($w * n)) & stride(round(n ** $a))", id="search-space"),
    pytest.param("dilated(min(n, 2 ** l), max(1, h)) | tokens([0, n - 1, L * H])", id="names"),
])
def test_idempotent_examples(text):
    once = unparse(parse(text))
    assert unparse(parse(once)) == once
    assert parse(once) == parse(text)


# ---- numeric evaluation through compile ----------------------------------------------------------


def _layout(spec, n, **kw):
    cp = patternc.compile(spec, n=n, block=kw.pop("block", 16), **kw)
    return [np.asarray(a) for a in cp.layout(0, 0)]


def _same_layout(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


EQUIVALENT = [
    pytest.param("window(2**9)", "window(512)", 2048, None, id="power"),
    pytest.param("window(round(n / 3))", "window(333)", 1000, None, id="round-div"),
    pytest.param("window(ceil(n / 3))", "window(334)", 1000, None, id="ceil"),
    pytest.param("window(floor(n / 3))", "window(333)", 1000, None, id="floor"),
    pytest.param("window(min(n, 100, 50))", "window(50)", 1000, None, id="min"),
    pytest.param("window(max(3, 7))", "window(7)", 1000, None, id="max"),
    pytest.param("window(17 // 5)", "window(3)", 1000, None, id="floordiv"),
    pytest.param("window(17 % 5)", "window(2)", 1000, None, id="mod"),
    pytest.param("window(-7 // 2 + 10)", "window(6)", 1000, None, id="floordiv-floors-negative"),
    pytest.param("window(-7 % 3 + 1)", "window(3)", 1000, None, id="mod-sign-of-divisor"),
    pytest.param("window(sqrt(16384))", "window(128)", 1000, None, id="integral-sqrt-float"),
    pytest.param("window(sqrt(n))", "window(128)", 16384, None, id="sqrt-n"),
    pytest.param("window(n ** 0.5)", "window(32)", 1024, None, id="fractional-power"),
    pytest.param("window(log2(n))", "window(10)", 1024, None, id="log2"),
    pytest.param("window(2 ** -1 * 8)", "window(4)", 1000, None, id="negative-exponent"),
    pytest.param("window(0.1 * 30)", "window(3)", 1000, None, id="float-rounding-noise"),
    pytest.param("window(round(2.5))", "window(2)", 1000, None, id="round-half-even-down"),
    pytest.param("window(round(3.5))", "window(4)", 1000, None, id="round-half-even-up"),
    pytest.param("window(-2 ** 2 + 8)", "window(4)", 1000, None, id="unary-minus-after-pow"),
    pytest.param("window((-2) ** 2)", "window(4)", 1000, None, id="pow-of-negative"),
    pytest.param("window(2 ** 3 ** 2 // 64)", "window(8)", 1000, None, id="pow-right-assoc"),
    pytest.param("window(10 - 2 - 3)", "window(5)", 1000, None, id="sub-left-assoc"),
    pytest.param("window(1e3 / 10)", "window(100)", 1000, None, id="exponent-literal"),
    pytest.param("window(+5)", "window(5)", 1000, None, id="unary-plus"),
    pytest.param("window($w)", "window(64)", 1000, {"w": 64}, id="param"),
    pytest.param("window($w * n)", "window(250)", 1000, {"w": 0.25}, id="param-fraction"),
    pytest.param("band(-(1 + 2), 4 // 2)", "band(-3, 2)", 1000, None, id="band-offsets"),
    pytest.param("tokens([n - 1, 0, 0])", "tokens([0, 999])", 1000, None, id="list-items"),
    pytest.param("diagonals([-(n - 1), 2 * 3])", "diagonals([-999, 6])", 1000, None,
                 id="negative-offset"),
    pytest.param("random(2, seed=3 + 4)", "random(2, seed=7)", 1000, None, id="seed-expr"),
    pytest.param("window(L + H)", "window(2)", 1000, None, id="bare-counts-are-one"),
    pytest.param("window(l + h + 1)", "window(1)", 1000, None, id="bare-indices-are-zero"),
    pytest.param("window(10**9)", "all", 1000, None, id="huge-count-is-everything"),
]


@pytest.mark.parametrize(("text", "literal", "n", "params"), EQUIVALENT)
def test_numeric_evaluation(text, literal, n, params):
    kw = {"params": params} if params else {}
    assert _same_layout(_layout(text, n, **kw), _layout(literal, n))


def test_numeric_evaluation_distinguishes():
    """The comparison above can fail: nearby values give different layouts."""
    assert not _same_layout(_layout("window(2**9)", 2048), _layout("window(511)", 2048))
    assert not _same_layout(_layout("window(2 ** 3 ** 2 // 64)", 1000), _layout("window(1)", 1000))


def test_layer_and_head_names_in_a_stack():
    stack = patternc.Stack(default="window(2 ** h + l)", layers=2, heads=4)
    cp = patternc.compile(stack, n=256, block=16)
    for layer in range(2):
        for head in range(4):
            got = [np.asarray(a) for a in cp.layout(layer, head)]
            assert _same_layout(got, _layout(f"window({2**head + layer})", 256))
    counts = patternc.compile(patternc.Stack(default="window(L * 10 + H)", layers=3, heads=2),
                              n=256, block=16)
    assert _same_layout([np.asarray(a) for a in counts.layout(2, 1)], _layout("window(32)", 256))
