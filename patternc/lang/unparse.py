"""Canonical text of a syntax tree: single spaces around operators, the fewest parentheses.

``parse(unparse(tree)) == tree`` for every tree ``parse`` returns.

>>> unparse(patternc.parse("causal&(window( 512 )|global(4))"))
'causal & (window(512) | global(4))'
"""

from __future__ import annotations

import re

from patternc.lang import ast

__all__ = ["identifier", "unparse"]


def identifier(text: str) -> str:
    """A Python identifier naming an expression, for functions made from it (FlexAttention's
    ``mask_mod.__name__``, attention-gym's habit): operators become words.

    >>> identifier("causal & (window(256) | global(16))")
    'causal_and_window_256_or_global_16'
    """
    words = {"&": " and ", "|": " or ", "-": " minus ", "~": " not "}
    text = re.sub(r"[&|~]|(?<=[\s)])-(?=\s)", lambda m: words[m.group()], text)
    return re.sub(r"\W+", "_", text).strip("_") or "pattern"

# Binding strength: a child binding more loosely than its context needs parentheses.
_PATTERN_LEVEL = {ast.Union: 1, ast.Difference: 1, ast.Intersect: 2}
_PATTERN_OP = {ast.Union: "|", ast.Difference: "-", ast.Intersect: "&"}
_NUMBER_LEVEL = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2, "**": 4}
_UNARY_LEVEL = 3
_ATOM_LEVEL = 5


def unparse(node: ast.Pattern | ast.Arg) -> str:
    """Canonical text of a pattern or of a numeric argument."""
    if isinstance(node, (ast.Union, ast.Difference, ast.Intersect)):
        level = _PATTERN_LEVEL[type(node)]
        left = _wrap(node.left, _level(node.left) < level)
        right = _wrap(node.right, _level(node.right) <= level)
        return f"{left} {_PATTERN_OP[type(node)]} {right}"
    if isinstance(node, ast.Complement):
        return "~" + _wrap(node.operand, _level(node.operand) < _ATOM_LEVEL)
    if isinstance(node, ast.Primitive):
        if not node.args and not node.kwargs:
            return node.name
        parts = [unparse(a) for a in node.args] + [f"{k}={unparse(v)}" for k, v in node.kwargs]
        return f"{node.name}({', '.join(parts)})"
    if isinstance(node, ast.ListArg):
        return "[" + ", ".join(unparse(item) for item in node.items) + "]"
    if isinstance(node, ast.Num):
        return repr(node.value)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Param):
        return "$" + node.id
    if isinstance(node, ast.Call):
        return f"{node.func}({', '.join(unparse(a) for a in node.args)})"
    if isinstance(node, ast.Unary):
        return node.op + _wrap(node.operand, _level(node.operand) < _UNARY_LEVEL)
    if isinstance(node, ast.Binary):
        level = _NUMBER_LEVEL[node.op]
        if node.op == "**":  # right-associative; the exponent may carry a sign
            left = _wrap(node.left, _level(node.left) <= level)
            right = _wrap(node.right, _level(node.right) < _UNARY_LEVEL)
        else:
            left = _wrap(node.left, _level(node.left) < level)
            right = _wrap(node.right, _level(node.right) <= level)
        return f"{left} {node.op} {right}"
    raise TypeError(f"not a pattern syntax node: {node!r}")


def _level(node) -> int:
    if isinstance(node, (ast.Union, ast.Difference, ast.Intersect)):
        return _PATTERN_LEVEL[type(node)]
    if isinstance(node, ast.Binary):
        return _NUMBER_LEVEL[node.op]
    if isinstance(node, ast.Unary):
        return _UNARY_LEVEL
    if isinstance(node, ast.Num) and node.value < 0:
        return _UNARY_LEVEL  # a negative literal prints with its sign
    return _ATOM_LEVEL


def _wrap(node, parens: bool) -> str:
    text = unparse(node)
    return f"({text})" if parens else text
