"""Split pattern text into tokens, each with its source offsets.

>>> [t.text for t in tokenize("causal & window($w * 2)")]
['causal', '&', 'window', '(', '$w', '*', '2', ')', '']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from patternc.errors import PatternSyntaxError

__all__ = ["Token", "tokenize"]

# Longest operators first so that `**` and `//` win over `*` and `/`.
_OPERATORS = ("**", "//", "|", "&", "-", "~", "(", ")", "[", "]", ",", "=", "+", "*", "/", "%")
_NUMBER = re.compile(r"(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w*")
MAX_TEXT = 100_000  # characters; a pattern is a line of config, not a data file


@dataclass(frozen=True, slots=True)
class Token:
    """One token: ``kind`` is ``ident``, ``param``, ``number``, ``op`` or ``end``."""

    kind: str
    text: str
    pos: int
    end: int


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text``, ending with an ``end`` token; raises ``PatternSyntaxError``."""
    if not isinstance(text, str):
        raise PatternSyntaxError(f"a pattern must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise PatternSyntaxError(f"pattern text is {len(text)} characters; the limit is {MAX_TEXT}")
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        if m := _SPACE.match(text, pos):
            pos = m.end()
            continue
        if m := _NUMBER.match(text, pos):
            tokens.append(Token("number", m.group(), pos, m.end()))
            pos = m.end()
            if pos < len(text) and (text[pos].isalnum() or text[pos] == "_"):
                stop = _WORD.match(text, pos).end()  # name the whole bad token, '1abc' not '1a'
                raise PatternSyntaxError(
                    f"malformed number {text[tokens[-1].pos : stop]!r}: expected digits with an"
                    " optional fraction and exponent (512, 0.5, 1e-3); names cannot start with a"
                    " digit",
                    text=text, pos=tokens[-1].pos, end=stop,
                )
            continue
        if m := _IDENT.match(text, pos):
            tokens.append(Token("ident", m.group(), pos, m.end()))
            pos = m.end()
            continue
        if text[pos] == "$":
            m = _IDENT.match(text, pos + 1)
            if m is None:
                raise PatternSyntaxError(
                    "expected a parameter name after '$', as in $w", text=text, pos=pos
                )
            tokens.append(Token("param", text[pos : m.end()], pos, m.end()))
            pos = m.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, pos):
                tokens.append(Token("op", op, pos, pos + len(op)))
                pos += len(op)
                break
        else:
            raise PatternSyntaxError(
                f"unexpected character {text[pos]!r}: expected a name, a number, a $parameter"
                " or one of | & - ~ ( ) [ ] , = + * / // % **",
                text=text, pos=pos,
            )
    tokens.append(Token("end", "", len(text), len(text)))
    return tokens
