"""Recursive-descent parser: pattern text -> syntax tree.

Grammar (loosest binding first; ``&`` binds tighter than ``|`` and ``-``, which share a level and
associate to the left; numeric operators follow Python)::

    pattern  := term (('|' | '-') term)*
    term     := factor ('&' factor)*
    factor   := '~' factor | '(' pattern ')' | IDENT ['(' [arg (',' arg)*] ')']
    arg      := [IDENT '='] (number | '[' [number (',' number)*] ']')
    number   := sum;  sum := product (('+'|'-') product)*
    product  := signed (('*'|'/'|'//'|'%') signed)*
    signed   := ('-'|'+') signed | power;  power := atom ['**' signed]
    atom     := NUMBER | $IDENT | IDENT | IDENT '(' number (',' number)* ')' | '(' number ')'

>>> parse("causal & (window(512) | global(4))")
Intersect(left=Primitive(name='causal', ...), right=Union(...))
"""

from __future__ import annotations

import math
from functools import lru_cache

from patternc.errors import PatternError, PatternMeaningError, PatternSyntaxError
from patternc.lang import ast
from patternc.lang.check import check_pattern
from patternc.lang.tokens import Token, tokenize

__all__ = ["MAX_DEPTH", "parse"]

MAX_DEPTH = 100  # nesting of operators and parentheses; deeper text is refused, never a crash


def parse(text: str) -> ast.Pattern:
    """Parse and check a pattern expression; raises ``PatternError`` pointing at the fault.

    >>> parse("causal & window(512)") == parse("causal&window( 512 )")
    True
    """
    if not isinstance(text, str):
        raise PatternSyntaxError(f"a pattern must be text, got {type(text).__name__}")
    return _parse(text)


@lru_cache(maxsize=1024)  # parsing is pure; configs and searches parse the same text many times
def _parse(text: str) -> ast.Pattern:
    try:
        tree = _Parser(text).parse()
        check_pattern(tree)
    except PatternError as err:
        raise err.with_source(text) from None
    return tree


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    # ---- token helpers ---------------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def _is(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.text in ops

    def _take(self) -> Token:
        tok = self.tok
        self.i += 1
        return tok

    def _expect(self, op: str, context: str) -> Token:
        if not self._is(op):
            self._fail(f"expected '{op}' {context}")
        return self._take()

    def _fail(self, expected: str) -> None:
        tok = self.tok
        found = "the end of the pattern" if tok.kind == "end" else repr(tok.text)
        raise PatternSyntaxError(f"{expected}, found {found}", pos=tok.pos, end=max(tok.end, tok.pos + 1))

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise PatternSyntaxError(
                f"pattern nested more than {MAX_DEPTH} levels deep", pos=self.tok.pos
            )

    # ---- patterns --------------------------------------------------------------------------------

    def parse(self) -> ast.Pattern:
        tree = self.pattern()
        if self.tok.kind != "end":
            if self._is(")"):
                self._fail("unbalanced ')': expected an operator (| & -) or the end")
            self._fail("expected an operator (| & -) or the end of the pattern")
        _check_depth(tree)
        return tree

    def pattern(self) -> ast.Pattern:
        left = self.term()
        while self._is("|", "-"):
            op = self._take().text
            right = self.term()
            span = (left.span[0], right.span[1])
            left = ast.Union(left, right, span) if op == "|" else ast.Difference(left, right, span)
        return left

    def term(self) -> ast.Pattern:
        left = self.factor()
        while self._is("&"):
            self._take()
            right = self.factor()
            left = ast.Intersect(left, right, (left.span[0], right.span[1]))
        return left

    def factor(self) -> ast.Pattern:
        self._enter()
        try:
            if self._is("~"):
                start = self._take().pos
                operand = self.factor()
                return ast.Complement(operand, (start, operand.span[1]))
            if self._is("("):
                start = self._take().pos
                inner = self.pattern()
                self._expect(")", "to close the '(' of this group")
                return _respan(inner, (start, self.tokens[self.i - 1].end))
            if self.tok.kind == "ident":
                return self.primitive()
            self._fail("expected a pattern (a primitive such as window(512), '(' or '~')")
            raise AssertionError  # unreachable: _fail raises
        finally:
            self.depth -= 1

    def primitive(self) -> ast.Primitive:
        name = self._take()
        if not self._is("("):
            return ast.Primitive(name.text, (), (), (name.pos, name.end))
        self._take()
        args: list[ast.Arg] = []
        kwargs: list[tuple[str, ast.Arg]] = []
        if not self._is(")"):
            while True:
                if self.tok.kind == "ident" and self.tokens[self.i + 1].text == "=":
                    key = self._take()
                    self._take()
                    kwargs.append((key.text, self.argument()))
                elif kwargs:
                    self._fail("expected a named argument (name=value) after a named argument")
                else:
                    args.append(self.argument())
                if not self._is(","):
                    break
                self._take()
        close = self._expect(")", f"to close the arguments of {name.text}(")
        return ast.Primitive(name.text, tuple(args), tuple(kwargs), (name.pos, close.end))

    def argument(self) -> ast.Arg:
        if not self._is("["):
            return self.number()
        start = self._take().pos
        items: list[ast.Number] = []
        if not self._is("]"):
            items.append(self.number())
            while self._is(","):
                self._take()
                items.append(self.number())
        close = self._expect("]", "to close the list")
        return ast.ListArg(tuple(items), (start, close.end))

    # ---- numbers ---------------------------------------------------------------------------------

    def number(self) -> ast.Number:
        left = self.product()
        while self._is("+", "-"):
            op = self._take().text
            right = self.product()
            left = ast.Binary(op, left, right, (left.span[0], right.span[1]))
        return left

    def product(self) -> ast.Number:
        left = self.signed()
        while self._is("*", "/", "//", "%"):
            op = self._take().text
            right = self.signed()
            left = ast.Binary(op, left, right, (left.span[0], right.span[1]))
        return left

    def signed(self) -> ast.Number:
        self._enter()
        try:
            if self._is("-", "+"):
                sign = self._take()
                operand = self.signed()
                return ast.Unary(sign.text, operand, (sign.pos, operand.span[1]))
            base = self.atom()
            if self._is("**"):
                self._take()
                exponent = self.signed()
                return ast.Binary("**", base, exponent, (base.span[0], exponent.span[1]))
            return base
        finally:
            self.depth -= 1

    def atom(self) -> ast.Number:
        tok = self.tok
        if tok.kind == "number":
            is_float = any(c in tok.text for c in ".eE")
            try:
                value = float(tok.text) if is_float else int(tok.text)
            except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
                value = math.inf
            if value == math.inf:  # 1e400 would print back as 'inf', which does not parse
                raise PatternMeaningError(
                    f"number {_shorten(tok.text)} is too large (magnitude above 1e18)",
                    pos=tok.pos, end=tok.end,
                )
            self._take()
            return ast.Num(value, (tok.pos, tok.end))
        if tok.kind == "param":
            self._take()
            return ast.Param(tok.text[1:], (tok.pos, tok.end))
        if tok.kind == "ident":
            self._take()
            if not self._is("("):
                return ast.Name(tok.text, (tok.pos, tok.end))
            self._take()
            args = [self.number()]
            while self._is(","):
                self._take()
                args.append(self.number())
            close = self._expect(")", f"to close the arguments of {tok.text}(")
            return ast.Call(tok.text, tuple(args), (tok.pos, close.end))
        if self._is("("):
            start = self._take().pos
            inner = self.number()  # depth is counted once per level, in signed()
            close = self._expect(")", "to close the '('")
            return _respan(inner, (start, close.end))
        self._fail("expected a number, a name such as n, or a parameter such as $w")
        raise AssertionError  # unreachable: _fail raises


def _shorten(text: str, keep: int = 20) -> str:
    return repr(text) if len(text) <= keep else f"'{text[:keep]}...' ({len(text)} characters)"


def _respan(node, span: ast.Span):
    """The same node with the span of its enclosing parentheses (for carets on groups)."""
    fields = {name: getattr(node, name) for name in node.__dataclass_fields__}
    fields["span"] = span
    return type(node)(**fields)


def _check_depth(tree: ast.Pattern) -> None:
    """Refuse trees deeper than MAX_DEPTH (long operator chains), iteratively: no recursion."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PatternSyntaxError(
                f"pattern has more than {MAX_DEPTH} nested operations; split it into a stack",
                pos=node.span[0], end=node.span[1],
            )
        stack.extend((child, depth + 1) for child in ast.children(node))
