"""Fuzzing: whatever the text, only a ``PatternError`` comes out, and nothing hangs.

Texts come from hypothesis (token soup, mutations of valid patterns) and from a seeded random
generator (grammar-built patterns with random values, then mutated). Each is fed to ``parse`` and
to ``compile`` at a small length and block. Any other exception is an escape; the target is none.
The time check is a hang detector only (a call taking seconds), never a benchmark.
"""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patternc
from patternc.lang.check import FUNCTIONS
from patternc.primitives import PRIMITIVES

HANG_S = 5.0  # a call this slow is stuck, not slow

# Pieces the language is made of, plus a few it is not.
TOKENS = [
    *"()[],=|&-~+*/%$ .eE0123456789_\n\t", "**", "//",
    *PRIMITIVES, *FUNCTIONS, "n", "l", "h", "L", "H", "seed", "$w", "$a",
    "1e308", "9" * 40, "0.0", "1e-400", "@", "#", "\x00", "é", "٣",
]

VALID = [
    "causal & (window(512) | global(4))",
    "random(2, seed=7)",
    "tokens([0, n - 1])",
    "window(round(sqrt(n)))",
    "band(-3, 2) - stride(4)",
    "~causal | dilated(4, 2)",
    "fixed(8, 2) & chunk(16)",
    "diagonals([1, -1, 0])",
    "window(min(n, 2 ** l)) & sink(h + 1)",
    "prefix(n // 2) | columns([1, 2, 3])",
    "window(2 ** h * 4 % 7 + 1)",
    "causal & window(ceil($w * n))",
    "all - none",
]

INSERTS = ["**2**2**2**99", "-", "--", "**-", "[", "(" * 200, ")" * 50, "1e308*1e308", "0.0",
           "/0", "//0", "%0", "9" * 5000, "|a" * 3000, "~" * 300, "$", "=", ",", "sqrt(-1)",
           "log2(0)", "2**-2000", "(-8)**0.5", "n**n", "1e-320"]


def _attempt(text: str, escapes: list, *, n: int = 37, block=8, params=None) -> None:
    """parse(text) and compile(text, ...); record anything but a PatternError, fail on a hang."""
    calls = (
        ("parse", lambda: patternc.parse(text)),
        ("compile", lambda: patternc.compile(text, n=n, block=block, params=params)),
    )
    for name, call in calls:
        start = time.perf_counter()
        try:
            call()
        except patternc.PatternError:
            pass
        except Exception as err:  # the point of the test: nothing else may escape
            escapes.append((name, type(err).__name__, str(err)[:120], text[:200]))
        elapsed = time.perf_counter() - start
        assert elapsed < HANG_S, f"{name} hung for {elapsed:.1f}s on {text[:200]!r}"


def _no_escapes(escapes: list) -> None:
    assert not escapes, f"{len(escapes)} escapes, first ones: {escapes[:5]}"


# ---- hypothesis ----------------------------------------------------------------------------------

FUZZ = settings(max_examples=600, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_token_soup(text):
    escapes: list = []
    _attempt(text, escapes)
    _no_escapes(escapes)


@FUZZ
@given(st.text(max_size=30))
def test_any_unicode_text(text):
    escapes: list = []
    _attempt(text, escapes)
    _no_escapes(escapes)


@st.composite
def mutated(draw):
    text = list(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "swap", "duplicate", "splice"]))
        at = draw(st.integers(0, len(text)))
        if op == "delete" and text:
            del text[min(at, len(text) - 1)]
        elif op == "insert":
            text.insert(at, draw(st.sampled_from(TOKENS)))
        elif op == "swap" and len(text) > 1:
            a, b = draw(st.integers(0, len(text) - 1)), draw(st.integers(0, len(text) - 1))
            text[a], text[b] = text[b], text[a]
        elif op == "duplicate" and text:
            i = min(at, len(text) - 1)
            text.insert(i, text[i] * draw(st.integers(2, 4)))
        else:
            text.insert(at, draw(st.sampled_from(INSERTS)))
    return "".join(text)


@FUZZ
@given(mutated(), st.integers(1, 70), st.sampled_from([1, 3, 8, (4, 16), (16, 5)]))
def test_mutated_valid_patterns(text, n, block):
    escapes: list = []
    _attempt(text, escapes, n=n, block=block)
    _no_escapes(escapes)


# ---- seeded generator: grammar-built patterns with random values ---------------------------------


class Gen:
    """Random pattern text from the grammar, with values that are often out of range."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def number(self, depth: int = 0) -> str:
        r = self.rng
        roll = r.random()
        if depth > 2 or roll < 0.55:
            return r.choice([
                str(r.randint(1, 9)), str(r.randint(0, 300)), str(r.choice([0, 2, 10**18, 10**19])),
                repr(r.uniform(0, 5)), "n", "l", "h + 1", "L", "H", "$w", "1e-3", "0.5", "4.0",
            ])
        if roll < 0.6:
            return r.choice("-+") + self.number(depth + 1)
        if roll < 0.85:
            op = r.choice(["+", "-", "*", "/", "//", "%", "**"])
            return f"({self.number(depth + 1)} {op} {self.number(depth + 1)})"
        func = r.choice(sorted(FUNCTIONS))
        low, high = FUNCTIONS[func]
        count = r.randint(low, high or low + 2)
        if r.random() < 0.05:  # now and then the wrong arity
            count = r.choice([low - 1, (high or low) + 1])
        return f"{func}({', '.join(self.number(depth + 1) for _ in range(count))})"

    def primitive(self) -> str:
        r = self.rng
        name = r.choice(sorted(PRIMITIVES))
        spec = PRIMITIVES[name].args
        if not spec and r.random() < 0.9:
            return name
        args = []
        for p in spec:
            if p.is_list and r.random() < 0.95:
                args.append("[" + ", ".join(self.number() for _ in range(r.randint(0, 4))) + "]")
            else:
                args.append(self.number())
        if spec and spec[-1].default is not None and r.random() < 0.5:
            args[-1] = f"{spec[-1].name}={args[-1]}"
        return f"{name}({', '.join(args)})"

    def pattern(self, depth: int = 0) -> str:
        r = self.rng
        roll = r.random()
        if depth > 3 or roll < 0.45:
            return self.primitive()
        if roll < 0.5:
            return "~" + self.pattern(depth + 1)
        op = r.choice(["|", "&", "-"])
        return f"({self.pattern(depth + 1)} {op} {self.pattern(depth + 1)})"

    def mutate(self, text: str) -> str:
        r = self.rng
        chars = list(text)
        for _ in range(r.randint(1, 3)):
            at = r.randint(0, len(chars))
            op = r.random()
            if op < 0.3 and chars:
                del chars[min(at, len(chars) - 1)]
            elif op < 0.6:
                chars.insert(at, r.choice(TOKENS))
            elif op < 0.8 and len(chars) > 1:
                a, b = r.randrange(len(chars)), r.randrange(len(chars))
                chars[a], chars[b] = chars[b], chars[a]
            else:
                chars.insert(at, r.choice(INSERTS))
        return "".join(chars)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeded_grammar_fuzz(seed):
    rng = random.Random(seed)
    gen = Gen(rng)
    escapes: list = []
    valid = 0
    for _ in range(500):
        text = gen.pattern()
        if rng.random() < 0.5:
            text = gen.mutate(text)
        n = rng.choice([1, 2, 7, 37, 64, 100])
        block = rng.choice([1, 4, 8, 16, (8, 4), (3, 16)])
        params = {"w": rng.choice([0, 1, 0.5, 3, -2, 10**6])} if "$w" in text else None
        try:
            patternc.parse(text)
            valid += 1
        except patternc.PatternError:
            pass
        _attempt(text, escapes, n=n, block=block, params=params)
    _no_escapes(escapes)
    assert valid > 100, "the generator should mostly produce text that parses"


# ---- pathological inputs -------------------------------------------------------------------------

PATHOLOGICAL = [
    pytest.param("(" * 5000, id="5000-open-parens"),
    pytest.param(")" * 5000, id="5000-close-parens"),
    pytest.param("(" * 5000 + "causal" + ")" * 5000, id="5000-balanced-parens"),
    pytest.param("a|" * 5000 + "a", id="5000-or-chain-unknown"),
    pytest.param("causal|" * 5000 + "causal", id="5000-or-chain"),
    pytest.param("causal&" * 5000 + "causal", id="5000-and-chain"),
    pytest.param("~" * 5000 + "causal", id="5000-tildes"),
    pytest.param("window(" + "(" * 5000 + "1" + ")" * 5000 + ")", id="5000-number-parens"),
    pytest.param("window(" + "-" * 5000 + "1)", id="5000-minus"),
    pytest.param("window(" + "1+" * 5000 + "1)", id="5000-plus-chain"),
    pytest.param("window(" + "2**" * 5000 + "2)", id="5000-power-tower"),
    pytest.param("window(2**2**2**2**2)", id="power-tower-5"),
    pytest.param("window(2**2**99)", id="2**2**99"),
    pytest.param("window(9**9**9**9)", id="9**9**9**9"),
    pytest.param("window(" + "9" * 5000 + ")", id="5000-digit-int"),
    pytest.param("window(1" + "0" * 400 + ".0)", id="400-digit-float"),
    pytest.param("window(1e99999)", id="huge-exponent"),
    pytest.param("window(1e-99999)", id="tiny-exponent"),
    pytest.param("tokens([" + "1, " * 20000 + "1])", id="20000-list-items"),
    pytest.param("tokens([" + ", ".join(str(i) for i in range(30)) + "])", id="30-tokens"),
    pytest.param("window(min(" + ", ".join(["n"] * 10000) + "))", id="10000-min-args"),
    pytest.param("causal|" * 20000, id="over-text-limit"),
    pytest.param("window(n ** n ** n)", id="n-tower"),
    pytest.param("window(10**18 * 10**18)", id="product-overflow"),
    pytest.param("window((10**18) ** 0.5 ** -3)", id="fractional-tower"),
    pytest.param("window(1e308 + 1e308 - 1e308)", id="float-inf-intermediate"),
    pytest.param("window(round(1e18 / 3) % 7 + 1)", id="big-round"),
    pytest.param("window(ceil(-0.0) + 1)", id="negative-zero"),
    pytest.param("random(10**18, seed=10**18)", id="huge-random"),
    pytest.param("dilated(10**18, 10**18) | stride(10**18) | band(-10**18, 10**18)",
                 id="huge-counts"),
    pytest.param("fixed(10**18, 10**18) & chunk(10**18) & prefix(10**18)", id="huge-regions"),
    pytest.param("\x00", id="nul"),
    pytest.param("causal\u2028& window(4)", id="unicode-line-separator"),
    pytest.param("window(\u0663)", id="arabic-digit"),
    pytest.param("window(\U0001d7e0)", id="math-digit"),
    pytest.param("window(2\u00b2)", id="superscript"),
]


@pytest.mark.parametrize("text", PATHOLOGICAL)
def test_pathological(text):
    escapes: list = []
    _attempt(text, escapes)
    _attempt(text, escapes, n=1, block=1)
    _no_escapes(escapes)


@pytest.mark.parametrize("spec", [
    pytest.param(None, id="none"), pytest.param(3, id="int"), pytest.param(b"causal", id="bytes"),
    pytest.param(["causal"], id="list"), pytest.param({"default": "causal"}, id="dict"),
])
def test_non_text_specs(spec):
    for call in (lambda: patternc.parse(spec), lambda: patternc.compile(spec, n=8, block=4)):
        with pytest.raises(patternc.PatternError):
            call()


@pytest.mark.parametrize(("n", "block"), [
    pytest.param(0, 8, id="n-zero"), pytest.param(-1, 8, id="n-negative"),
    pytest.param(2**40, 8, id="n-huge"), pytest.param(8.0, 8, id="n-float"),
    pytest.param(True, 8, id="n-bool"), pytest.param("8", 8, id="n-text"),
    pytest.param(8, 0, id="block-zero"), pytest.param(8, -4, id="block-negative"),
    pytest.param(8, (4, 0), id="block-pair-zero"), pytest.param(8, "x", id="block-text"),
    pytest.param(8, 2.5, id="block-float"), pytest.param(8, (1, 2, 3), id="block-triple"),
])
def test_bad_sizes_are_pattern_errors(n, block):
    with pytest.raises(patternc.PatternError):
        patternc.compile("causal", n=n, block=block)
