"""Bad inputs, each with its exact message, error class and caret column.

Every row says where the fault is (1-based column, and the text the carets sit under) and the
whole message, which must name the offending token and say what was expected. The printed form
(``str(err)``) is checked too: the message, the source line indented by two spaces, and a caret
line whose first ``^`` sits under the fault.
"""

from __future__ import annotations

import pytest

import patternc
from patternc import PatternMeaningError, PatternSyntaxError, StackError
from patternc.errors import CONTEXT
from patternc.lang.parser import MAX_DEPTH
from patternc.lang.tokens import MAX_TEXT

BLOCK = 16

_EXPECT_PAT = "expected a pattern (a primitive such as window(512), '(' or '~')"
_EXPECT_NUM = "expected a number, a name such as n, or a parameter such as $w"
_EXPECT_OP = "expected an operator (| & -) or the end of the pattern"
_UNEXPECTED = ("expected a name, a number, a $parameter or one of"
               " | & - ~ ( ) [ ] , = + * / // % **")
_NAMES = "numbers may use n, l, h, L, H and parameters such as $w"
_FUNCS = "functions: min, max, sqrt, log2, ceil, floor, round"
_PRIMS = ("primitives: all, band, causal, chunk, columns, diagonals, dilated, documents, fixed, global,"
          " neighborhood, none, prefix, random, sink, stride, tokens, window")
_ROUND = "; round it explicitly with round(), floor() or ceil()"
_MALFORMED = (": expected digits with an optional fraction and exponent (512, 0.5, 1e-3); names"
              " cannot start with a digit")


def row(text, cls, message, under, column, *, id, n=1000):
    return pytest.param(text, n, cls, message, under, column, id=id)


S, M = PatternSyntaxError, PatternMeaningError

# Faults found by parse(): the same error comes out of parse() and compile().
PARSE_ERRORS = [
    # -- syntax: characters and tokens
    row("causal @ window(4)", S, f"unexpected character '@': {_UNEXPECTED}", "@", 8, id="bad-char"),
    row("causal # comment", S, f"unexpected character '#': {_UNEXPECTED}", "#", 8, id="hash"),
    row("causal & window(4) ;", S, f"unexpected character ';': {_UNEXPECTED}", ";", 20,
        id="semicolon"),
    row("window(512", S, "expected ')' to close the arguments of window(, found the end of the"
        " pattern", "", 11, id="unclosed-args"),
    row("causal & (window(4)", S, "expected ')' to close the '(' of this group, found the end of"
        " the pattern", "", 20, id="unclosed-group"),
    row("window((1 + 2)", S, "expected ')' to close the arguments of window(, found the end of the"
        " pattern", "", 15, id="unclosed-args-after-group"),
    row("window((1 + 2)) & (causal", S, "expected ')' to close the '(' of this group, found the"
        " end of the pattern", "", 26, id="unclosed-second-group"),
    row("window(sqrt(4)", S, "expected ')' to close the arguments of window(, found the end of the"
        " pattern", "", 15, id="unclosed-after-call"),
    row("window(min(1, 2", S, "expected ')' to close the arguments of min(, found the end of the"
        " pattern", "", 16, id="unclosed-call"),
    row("tokens([1, 2)", S, "expected ']' to close the list, found ')'", ")", 13,
        id="unclosed-list"),
    row("tokens([1 2])", S, "expected ']' to close the list, found '2'", "2", 11,
        id="list-missing-comma"),
    row("causal)", S, "unbalanced ')': expected an operator (| & -) or the end, found ')'", ")", 7,
        id="stray-close"),
    row("window(4))", S, "unbalanced ')': expected an operator (| & -) or the end, found ')'", ")",
        10, id="extra-close"),
    row("causal &", S, f"{_EXPECT_PAT}, found the end of the pattern", "", 9,
        id="trailing-and"),
    row("causal | ", S, f"{_EXPECT_PAT}, found the end of the pattern", "", 10,
        id="trailing-or-space"),
    row("~", S, f"{_EXPECT_PAT}, found the end of the pattern", "", 2, id="lone-tilde"),
    row("", S, f"{_EXPECT_PAT}, found the end of the pattern", "", 1, id="empty"),
    row("   ", S, f"{_EXPECT_PAT}, found the end of the pattern", "", 4, id="blank"),
    row("()", S, f"{_EXPECT_PAT}, found ')'", ")", 2, id="empty-group"),
    row("& causal", S, f"{_EXPECT_PAT}, found '&'", "&", 1, id="leading-and"),
    row("causal && window(4)", S, f"{_EXPECT_PAT}, found '&'", "&", 9, id="double-and"),
    row("causal | | window(4)", S, f"{_EXPECT_PAT}, found '|'", "|", 10, id="double-or"),
    row("causal window(4)", S, f"{_EXPECT_OP}, found 'window'", "window", 8, id="missing-op"),
    row("window 512", S, f"{_EXPECT_OP}, found '512'", "512", 8, id="args-without-parens"),
    row("window(4) ~ causal", S, f"{_EXPECT_OP}, found '~'", "~", 11, id="binary-tilde"),
    row("window(512,)", S, f"{_EXPECT_NUM}, found ')'", ")", 12, id="trailing-comma"),
    row("window(,512)", S, f"{_EXPECT_NUM}, found ','", ",", 8, id="leading-comma"),
    row("window(1 +)", S, f"{_EXPECT_NUM}, found ')'", ")", 11, id="trailing-plus"),
    row("window(2 ** )", S, f"{_EXPECT_NUM}, found ')'", ")", 13, id="trailing-pow"),
    row("window(2 * * 3)", S, f"{_EXPECT_NUM}, found '*'", "*", 12, id="double-star"),
    row("window(round())", S, f"{_EXPECT_NUM}, found ')'", ")", 14, id="call-no-args"),
    row("window(=3)", S, f"{_EXPECT_NUM}, found '='", "=", 8, id="bare-equals"),
    row("window(w==3)", S, f"{_EXPECT_NUM}, found '='", "=", 10, id="double-equals"),
    row("window(causal & 1)", S, "expected ')' to close the arguments of window(, found '&'", "&",
        15, id="pattern-op-in-number"),
    row("window(n n)", S, "expected ')' to close the arguments of window(, found 'n'", "n", 10,
        id="two-numbers"),
    row("window(1.2.3)", S, "expected ')' to close the arguments of window(, found '.3'", ".3",
        11, id="two-dots"),
    row("$", S, "expected a parameter name after '$', as in $w", "$", 1, id="lone-dollar"),
    row("window($)", S, "expected a parameter name after '$', as in $w", "$", 8,
        id="dollar-no-name"),
    row("window($1)", S, "expected a parameter name after '$', as in $w", "$", 8,
        id="dollar-digit"),
    row("window(1abc)", S, f"malformed number '1abc'{_MALFORMED}", "1abc", 8, id="digit-name"),
    row("window(1e)", S, f"malformed number '1e'{_MALFORMED}", "1e", 8, id="bare-exponent"),
    row("window(2_000)", S, f"malformed number '2_000'{_MALFORMED}", "2_000", 8,
        id="underscore-number"),
    row("random(seed=7, 2)", S, "expected a named argument (name=value) after a named argument,"
        " found '2'", "2", 16, id="positional-after-named"),
    # -- meaning, found while parsing
    row("causal & windw(512)", M, "unknown primitive 'windw' (did you mean 'window'?)", "windw",
        10, id="typo-primitive"),
    row("casual", M, "unknown primitive 'casual' (did you mean 'causal'?)", "casual", 1,
        id="typo-no-args"),
    row("causal | foo(1)", M, f"unknown primitive 'foo'; {_PRIMS}", "foo", 10,
        id="unknown-primitive-lists-all"),
    row("window(4, 5)", M, "window takes 1 argument, got 2", "5", 11, id="too-many-args"),
    row("band(1, 2, 3)", M, "band takes 2 arguments, got 3", "3", 12, id="too-many-args-band"),
    row("causal(1)", M, "causal takes no arguments, got 1", "1", 8, id="args-to-constant"),
    row("window", M, "window is missing its argument 'w' (it takes w)", "window", 1,
        id="missing-arg"),
    row("band(1)", M, "band is missing its argument 'hi' (it takes lo, hi)", "band(1)", 1,
        id="missing-second-arg"),
    row("random(seed=1)", M, "random is missing its argument 'r' (it takes r, seed)",
        "random(seed=1)", 1, id="missing-required-named"),
    row("window(x=3)", M, "window has no argument 'x' (its arguments: w)", "3", 10,
        id="unknown-named-arg"),
    row("causal(x=3)", M, "causal has no argument 'x' (its arguments: none)", "3", 10,
        id="named-arg-to-constant"),
    row("window(4, w=5)", M, "window got argument 'w' twice", "5", 13, id="arg-twice"),
    row("random(2, seed=1, seed=2)", M, "random got argument 'seed' twice", "2", 24,
        id="named-twice"),
    row("window(foo)", M, f"unknown name 'foo'; {_NAMES}", "foo", 8, id="unknown-name"),
    row("window(N)", M, f"unknown name 'N'; {_NAMES}", "N", 8, id="unknown-name-case"),
    row("window(window)", M, f"unknown name 'window' ('window' is a pattern; arguments are"
        f" numbers); {_NAMES}", "window", 8, id="pattern-as-name"),
    row("window(sqrt2(n))", M, f"unknown function 'sqrt2' (did you mean 'sqrt'?); {_FUNCS}",
        "sqrt2", 8, id="typo-function"),
    row("window(causal(1))", M, f"unknown function 'causal' ('causal' is a pattern; arguments"
        f" are numbers); {_FUNCS}", "causal", 8, id="pattern-as-function"),
    row("window(min(3))", M, "min takes at least 2 arguments, got 1", "min(3)", 8,
        id="min-one-arg"),
    row("window(max(n))", M, "max takes at least 2 arguments, got 1", "max(n)", 8,
        id="max-one-arg"),
    row("window(sqrt(1, 2))", M, "sqrt takes exactly 1 argument, got 2", "sqrt(1, 2)", 8,
        id="sqrt-two-args"),
    row("window(round(n, 2))", M, "round takes exactly 1 argument, got 2", "round(n, 2)", 8,
        id="round-two-args"),
    row("window([1, 2])", M, "window's argument 'w' must be a number, not a list", "[1, 2]", 8,
        id="list-for-number"),
    row("tokens(3)", M, "tokens's argument 'positions' must be a list such as [0, 1]", "3", 8,
        id="number-for-list"),
    row("diagonals(offsets=n)", M, "diagonals's argument 'offsets' must be a list such as [0, 1]",
        "n", 19, id="number-for-list-named"),
    row("window(1e400)", M, "number '1e400' is too large (magnitude above 1e18)", "1e400", 8,
        id="infinite-literal"),
]

# Faults found when values are known (compile): parse() accepts the text.
COMPILE_ERRORS = [
    row("window(sqrt(n))", M, f"window's argument 'w' must be an integer, got 31.6228{_ROUND}",
        "sqrt(n)", 8, id="non-integral-count"),
    row("window(2.5)", M, f"window's argument 'w' must be an integer, got 2.5{_ROUND}", "2.5", 8,
        id="fractional-literal"),
    row("band(0.5, 3)", M, f"band's argument 'lo' must be an integer, got 0.5{_ROUND}", "0.5", 6,
        id="fractional-offset"),
    row("tokens([0, n / 3])", M, "an entry of tokens's argument 'positions' must be an integer,"
        f" got 333.333{_ROUND}", "n / 3", 12, id="fractional-position"),
    row("window(0)", M, "window's argument 'w' must be at least 1, got 0", "0", 8,
        id="window-zero"),
    row("window(n - n - 1)", M, "window's argument 'w' must be at least 1, got -1", "n - n - 1",
        8, id="window-negative"),
    row("stride(-2)", M, "stride's argument 's' must be at least 1, got -2", "-2", 8,
        id="stride-negative"),
    row("dilated(0, 2)", M, "dilated's argument 'w' must be at least 1, got 0", "0", 9,
        id="dilated-w"),
    row("dilated(4, 0)", M, "dilated's argument 'd' must be at least 1, got 0", "0", 12,
        id="dilated-d"),
    row("chunk(0)", M, "chunk's argument 'c' must be at least 1, got 0", "0", 7, id="chunk"),
    row("sink(0)", M, "sink's argument 'g' must be at least 1, got 0", "0", 6, id="sink"),
    row("global(-1)", M, "global's argument 'g' must be at least 1, got -1", "-1", 8,
        id="global"),
    row("prefix(0)", M, "prefix's argument 'p' must be at least 1, got 0", "0", 8, id="prefix"),
    row("fixed(0, 0)", M, "fixed's argument 'c' must be at least 1, got 0", "0", 7,
        id="fixed-c"),
    row("fixed(4, 0)", M, "fixed's argument 's' must be at least 1, got 0", "0", 10,
        id="fixed-s-zero"),
    row("fixed(4, 8)", M, "fixed(c, s) needs s <= c (s summary keys per chunk of c), got s = 8 >"
        " c = 4", "fixed(4, 8)", 1, id="fixed-s-over-c"),
    row("random(0)", M, "random's argument 'r' must be at least 1, got 0", "0", 8, id="random-r"),
    row("random(2, seed=-1)", M, "random's argument 'seed' must be a non-negative integer, got -1",
        "-1", 16, id="random-seed"),
    row("band(5, 3)", M, "band(lo, hi) needs lo <= hi, got lo = 5 > hi = 3", "band(5, 3)", 1,
        id="band-reversed"),
    row("causal & tokens([n])", M, "position 1000 in tokens's argument 'positions' is outside the"
        " sequence [0, 1000)", "n", 18, id="tokens-n"),
    row("tokens([0, -1])", M, "position -1 in tokens's argument 'positions' is outside the"
        " sequence [0, 1000)", "-1", 12, id="tokens-negative"),
    row("columns([5, n + 3])", M, "position 1003 in columns's argument 'positions' is outside the"
        " sequence [0, 1000)", "n + 3", 13, id="columns-past-end"),
    row("diagonals([n])", M, "offset 1000 in diagonals's argument 'offsets' is outside (-1000,"
        " 1000) for n = 1000", "n", 12, id="diagonals-n"),
    row("diagonals([0, -n])", M, "offset -1000 in diagonals's argument 'offsets' is outside"
        " (-1000, 1000) for n = 1000", "-n", 15, id="diagonals-minus-n"),
    row("window(1/0)", M, "division by zero in '/'", "1/0", 8, id="div-zero"),
    row("window(5 // 0)", M, "division by zero in '//'", "5 // 0", 8, id="floordiv-zero"),
    row("window(5 % (n - n))", M, "division by zero in '%'", "5 % (n - n)", 8, id="mod-zero"),
    row("window(5 // 0.0)", M, "division by zero in '//'", "5 // 0.0", 8, id="floordiv-zero-float"),
    row("window(sqrt(-1))", M, "sqrt of a negative number (-1)", "sqrt(-1)", 8, id="sqrt-neg"),
    row("window(log2(0))", M, "log2 of a non-positive number (0)", "log2(0)", 8, id="log2-zero"),
    row("window(log2(-n))", M, "log2 of a non-positive number (-1000)", "log2(-n)", 8,
        id="log2-neg"),
    row("window(0 ** -1)", M, "zero raised to a negative power", "0 ** -1", 8, id="zero-neg-pow"),
    row("window((-8) ** 0.5)", M, "negative number raised to a fractional power", "(-8) ** 0.5",
        8, id="neg-frac-pow"),
    row("window(2**2**99)", M, "numeric value too large (magnitude above 1e18)", "2**99", 11,
        id="tower"),
    row("window(2**2**2**2**2)", M, "numeric value too large (magnitude above 1e18)",
        "2**2**2**2**2", 8, id="tower-of-five"),  # 2**65536: the inner 2**16 is fine
    row("window(10**19)", M, "numeric value too large (magnitude above 1e18): 1e+19", "10**19", 8,
        id="ten-to-19"),
    row("window(1e308 * 10)", M, "numeric value too large (magnitude above 1e18): 1e+308",
        "1e308", 8, id="huge-float-literal"),
    row("window(1e18 / 1e-300)", M, "numeric value is not finite", "1e18 / 1e-300", 8,
        id="float-overflow"),
    row("window(-(10**18) - 10**18)", M, "numeric value too large (magnitude above 1e18): -2e+18",
        "-(10**18) - 10**18", 8, id="negative-overflow"),
    row("window($w)", M, "parameter $w is not bound (bound: none); pass params={'w': ...} or"
        " --set w=...", "$w", 8, id="unbound-param"),
    row("window(l)", M, "window's argument 'w' must be at least 1, got 0", "l", 8,
        id="layer-index-zero"),
    row("causal & window(4) | band(3, 2)", M, "band(lo, hi) needs lo <= hi, got lo = 3 > hi = 2",
        "band(3, 2)", 22, id="fault-in-right-operand"),
    row("window(64) - tokens([0, 2, 64])", M, "position 64 in tokens's argument 'positions' is"
        " outside the sequence [0, 64)", "64", 28, n=64, id="small-n"),
]


def _check_printed(err, text, column, under):
    """str(err): the message, the source line, a caret line with its first ^ under ``column``."""
    printed = str(err).split("\n")
    assert printed[0] == (f"{err.where}: {err.message}" if err.where else err.message)
    assert len(printed) == 3, printed
    source_line = text.split("\n")[err.line - 1]
    shown, caret = printed[1], printed[2]
    assert shown.startswith("  ") and caret.startswith("  ")
    assert set(caret.strip()) == {"^"}
    at, width = caret.index("^"), caret.count("^")
    assert shown[at : at + width] == under  # the carets sit under the fault, as the line is shown
    if len(source_line) <= CONTEXT:  # short lines are shown whole
        assert shown == "  " + source_line
        assert at - 2 == column - 1
    else:  # long ones around the fault, "..." where clipped
        assert shown[2:].removeprefix("...").removesuffix("...") in source_line
        assert len(shown) <= 2 + 3 + 4 * CONTEXT + 3


def _check(err, cls, message, under, column, text):
    assert type(err) is cls
    assert isinstance(err, patternc.PatternError)
    assert isinstance(err, ValueError)
    assert err.message == message
    assert err.text == text
    assert err.column == column
    assert err.line == 1 + text.count("\n", 0, err.pos)
    _check_printed(err, text, column, under)


@pytest.mark.parametrize(("text", "n", "cls", "message", "under", "column"), PARSE_ERRORS)
def test_parse_errors(text, n, cls, message, under, column):
    with pytest.raises(cls) as info:
        patternc.parse(text)
    _check(info.value, cls, message, under, column, text)
    assert info.value.where is None


@pytest.mark.parametrize(("text", "n", "cls", "message", "under", "column"), PARSE_ERRORS)
def test_parse_errors_through_compile(text, n, cls, message, under, column):
    with pytest.raises(cls) as info:
        patternc.compile(text, n=n, block=BLOCK)
    _check(info.value, cls, message, under, column, text)
    assert info.value.where is None  # a bare expression has no file or key


@pytest.mark.parametrize(("text", "n", "cls", "message", "under", "column"), COMPILE_ERRORS)
def test_compile_errors(text, n, cls, message, under, column):
    patternc.parse(text)  # the fault is in a value, not in the text
    with pytest.raises(cls) as info:
        patternc.compile(text, n=n, block=BLOCK)
    _check(info.value, cls, message, under, column, text)


def test_tables_are_big_enough():
    assert len(PARSE_ERRORS) + len(COMPILE_ERRORS) >= 40


# ---- multi-line text -----------------------------------------------------------------------------

MULTILINE = [
    pytest.param("causal &\n  windw(3)", M, "unknown primitive 'windw' (did you mean 'window'?)",
                 2, 3, "windw", id="parse-line-2"),
    pytest.param("causal &\n  window(0)", M, "window's argument 'w' must be at least 1, got 0",
                 2, 10, "0", id="compile-line-2"),
    pytest.param("causal &\n(window(4) |\n sink(2)", S, "expected ')' to close the '(' of this"
                 " group, found the end of the pattern", 3, 9, "", id="unclosed-on-line-3"),
    pytest.param("causal &\n", S, f"{_EXPECT_PAT}, found the end of the pattern", 2, 1, "",
                 id="end-after-newline"),
    pytest.param("window(1)\n| window(2)\n| @", S, f"unexpected character '@': {_UNEXPECTED}",
                 3, 3, "@", id="bad-char-line-3"),
    pytest.param("band(\n  5,\n  3)", M, "band(lo, hi) needs lo <= hi, got lo = 5 > hi = 3", 1, 1,
                 "band(", id="span-over-lines-cut-at-line-end"),
]


@pytest.mark.parametrize(("text", "cls", "message", "line", "column", "under"), MULTILINE)
def test_multiline_caret_on_the_right_line(text, cls, message, line, column, under):
    with pytest.raises(cls) as info:
        patternc.compile(text, n=1000, block=BLOCK)
    err = info.value
    assert err.message == message
    assert (err.line, err.column) == (line, column)
    _check_printed(err, text, column, under)


# ---- errors without a position -------------------------------------------------------------------


@pytest.mark.parametrize(("params", "message"), [
    pytest.param({"w": 4, "x": 1}, "unknown parameter 'x'; the pattern's parameters are: w",
                 id="unknown-param"),
    pytest.param({"$w": 4}, "parameter name '$w' is not an identifier (write w, not $w)",
                 id="dollar-in-name"),
    pytest.param({"w": "4"}, "parameter w must be a number, got '4'", id="string-value"),
    pytest.param({"w": True}, "parameter w must be a number, got True", id="bool-value"),
])
def test_bad_params(params, message):
    with pytest.raises(patternc.PatternError) as info:
        patternc.compile("window($w)", n=64, block=BLOCK, params=params)
    assert info.value.message == message
    assert str(info.value) in (message, f"params: {message}")  # no position: where, then the message


def test_text_too_long():
    text = "causal|" * (MAX_TEXT // 7 + 1)
    with pytest.raises(PatternSyntaxError) as info:
        patternc.parse(text)
    assert info.value.message == f"pattern text is {len(text)} characters; the limit is {MAX_TEXT}"


def test_overlong_integer_literal_is_a_pattern_error():
    text = "window(" + "9" * 5000 + ")"  # more digits than int() converts
    with pytest.raises(PatternMeaningError) as info:
        patternc.parse(text)
    err = info.value
    assert err.message == ("number '99999999999999999999...' (5000 characters) is too large"
                           " (magnitude above 1e18)")
    assert (err.column, err.end) == (8, 5007)


# ---- nesting limits ------------------------------------------------------------------------------

DEEP = [
    pytest.param("(" * (MAX_DEPTH + 1) + "causal" + ")" * (MAX_DEPTH + 1),
                 f"pattern nested more than {MAX_DEPTH} levels deep", MAX_DEPTH + 1, id="parens"),
    pytest.param("(" * 5000, f"pattern nested more than {MAX_DEPTH} levels deep", MAX_DEPTH + 1,
                 id="5000-open"),
    pytest.param("~" * (MAX_DEPTH + 1) + "causal", f"pattern nested more than {MAX_DEPTH} levels"
                 " deep", MAX_DEPTH + 1, id="tildes"),
    pytest.param("window(" + "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1) + ")",
                 f"pattern nested more than {MAX_DEPTH} levels deep", None, id="number-parens"),
    pytest.param("window(" + "-" * 5000 + "1)", f"pattern nested more than {MAX_DEPTH} levels"
                 " deep", None, id="unary-chain"),
    pytest.param("causal|" * MAX_DEPTH + "causal", f"pattern has more than {MAX_DEPTH} nested"
                 " operations; split it into a stack", None, id="or-chain"),
    pytest.param("a|" * 5000 + "a", f"pattern has more than {MAX_DEPTH} nested operations; split"
                 " it into a stack", None, id="5000-or-chain"),
    pytest.param("window(" + "1+" * 5000 + "1)", f"pattern has more than {MAX_DEPTH} nested"
                 " operations; split it into a stack", None, id="plus-chain"),
]


@pytest.mark.parametrize(("text", "message", "column"), DEEP)
def test_nesting_limit(text, message, column):
    with pytest.raises(PatternSyntaxError) as info:
        patternc.parse(text)
    err = info.value
    assert err.message == message
    assert 1 <= err.column <= len(text) + 1
    if column is not None:
        assert err.column == column
    _check_printed(err, text, err.column, text[err.pos : err.pos + str(err).split("\n")[2]
                                              .count("^")])


@pytest.mark.parametrize("text", [
    pytest.param("(" * (MAX_DEPTH - 1) + "causal" + ")" * (MAX_DEPTH - 1), id="parens"),
    pytest.param("~" * (MAX_DEPTH - 1) + "causal", id="tildes"),
    pytest.param("window(" + "(" * (MAX_DEPTH - 3) + "1" + ")" * (MAX_DEPTH - 3) + ")",
                 id="number-parens"),
    pytest.param("causal|" * (MAX_DEPTH - 1) + "causal", id="or-chain"),
])
def test_just_under_the_nesting_limit_parses(text):
    patternc.parse(text)


# ---- errors inside stacks: the file and key, then the caret inside the expression ----------------

STACK_EXPRESSION_ERRORS = [
    pytest.param("layers: 2\ndefault: causal & windw(3)\n", M, "default",
                 "unknown primitive 'windw' (did you mean 'window'?)", 1, 10, id="default-typo"),
    pytest.param("layers: 2\ndefault: causal\noverrides:\n  - layers: 1\n    expr: causal &\n",
                 S, "overrides[0].expr", f"{_EXPECT_PAT}, found the end of the pattern", 1, 9,
                 id="override-syntax"),
    pytest.param("layers: 2\ndefault: |\n  causal &\n    windw(3)\n", M, "default",
                 "unknown primitive 'windw' (did you mean 'window'?)", 2, 3,
                 id="block-scalar-line-2"),  # YAML strips the block's 2-space indent
]


@pytest.mark.parametrize(("yaml_text", "cls", "key", "message", "line", "column"),
                         STACK_EXPRESSION_ERRORS)
def test_expression_errors_in_stack_files(tmp_path, yaml_text, cls, key, message, line, column):
    path = tmp_path / "stack.yaml"
    path.write_text(yaml_text)
    with pytest.raises(cls) as info:
        patternc.load_stack(path)
    err = info.value
    assert err.where == f"{path}: {key}"
    assert err.message == message
    assert (err.line, err.column) == (line, column)
    assert str(err).split("\n")[0] == f"{path}: {key}: {message}"
    _check_printed(err, err.text, column, err.text.split("\n")[line - 1][column - 1 : column - 1 +
                                                                          str(err).count("^")])


def test_value_error_in_stack_names_layer_and_head(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text("layers: 2\nheads: 3\ndefault: causal\noverrides:\n  - heads: 2\n"
                    "    expr: |\n      causal &\n        window(l - 1)\n")
    with pytest.raises(PatternMeaningError) as info:
        patternc.compile(path, n=64, block=BLOCK)
    err = info.value
    assert err.where == f"{path}: overrides[0].expr (layer 0, head 2)"
    assert err.message == "window's argument 'w' must be at least 1, got -1"
    assert (err.line, err.column) == (2, 10)
    _check_printed(err, err.text, 10, "l - 1")


def test_stack_error_is_a_pattern_error(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text("default: causal\nlayer: 2\n")
    with pytest.raises(StackError) as info:
        patternc.load_stack(path)
    assert isinstance(info.value, patternc.PatternError)
    assert str(info.value) == (f"{path}: unknown key 'layer'; a stack has layers, heads, block,"
                               " causal, default, overrides, params, description, kv_heads")
