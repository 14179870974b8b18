"""Bounded evaluation of numeric arguments.

Arguments are small arithmetic over ``n``, ``l``, ``h``, ``L``, ``H`` and ``$params``. Evaluation
can neither hang nor overflow: every intermediate value must stay within ``MAX_MAGNITUDE``, powers
are sized before they are computed, and every fault (division by zero, ``sqrt(-1)``) is a
``PatternMeaningError`` pointing at the operation.

>>> from patternc.lang import parse
>>> window = parse("window(round(sqrt(n)) * 2)")
>>> evaluate(window.args[0], {"n": 16384})
256
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from patternc.errors import PatternMeaningError, brief
from patternc.lang import ast

__all__ = ["MAX_MAGNITUDE", "evaluate", "to_integer"]

MAX_MAGNITUDE = 10**18  # no sequence length, count or offset comes near this
_INTEGRAL_TOLERANCE = 1e-9  # relative; accepts sqrt(16384) == 128.0 and n ** 0.5 alike

Value = int | float


def _fail(message: str, node) -> PatternMeaningError:
    return PatternMeaningError(message, pos=node.span[0], end=node.span[1])


def _bounded(value: Value, node) -> Value:
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail("numeric value is not finite", node)
    if abs(value) > MAX_MAGNITUDE:
        shown = f"{value:.3g}" if isinstance(value, float) or value.bit_length() < 1000 else brief(value)
        raise _fail(f"numeric value too large (magnitude above 1e18): {shown}", node)
    return value


def evaluate(node: ast.Number, env: Mapping[str, Value], params: Mapping[str, Value] | None = None) -> Value:
    """Value of a numeric expression; names come from ``env``, ``$params`` from ``params``."""
    params = params or {}
    if isinstance(node, ast.Num):
        return _bounded(node.value, node)
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise _fail(f"name '{node.id}' has no value here", node)
        return env[node.id]
    if isinstance(node, ast.Param):
        if node.id not in params:
            bound = ", ".join(sorted(params)) or "none"
            raise _fail(
                f"parameter ${node.id} is not bound (bound: {bound}); pass params={{'{node.id}': ...}}"
                f" or --set {node.id}=...",
                node,
            )
        if isinstance(params[node.id], tuple):
            raise _fail(f"parameter ${node.id} is a list; a number is needed here", node)
        return _bounded(params[node.id], node)
    if isinstance(node, ast.Unary):
        value = evaluate(node.operand, env, params)
        return -value if node.op == "-" else value
    if isinstance(node, ast.Binary):
        return _binary(node, evaluate(node.left, env, params), evaluate(node.right, env, params))
    if isinstance(node, ast.Call):
        args = [evaluate(a, env, params) for a in node.args]
        return _call(node, args)
    raise _fail("expected a number", node)


def _binary(node: ast.Binary, a: Value, b: Value) -> Value:
    op = node.op
    if op in ("/", "//", "%") and b == 0:
        raise _fail(f"division by zero in '{op}'", node)
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif op == "/":
        value = a / b
    elif op == "//":
        value = a // b
    elif op == "%":
        value = a % b
    else:
        value = _power(node, a, b)
    return _bounded(value, node)


def _power(node: ast.Binary, a: Value, b: Value) -> Value:
    if a == 0 and b < 0:
        raise _fail("zero raised to a negative power", node)
    if a < 0 and isinstance(b, float) and not b.is_integer():
        raise _fail("negative number raised to a fractional power", node)
    # Size the result before computing it: |a| ** b is about 2 ** (b * log2|a|).
    if a != 0 and b * math.log2(abs(a)) > 64:
        raise _fail("numeric value too large (magnitude above 1e18)", node)
    return a**b


def _call(node: ast.Call, args: list[Value]) -> Value:
    f = node.func
    if f == "min":
        return min(args)
    if f == "max":
        return max(args)
    (x,) = args
    if f == "sqrt":
        if x < 0:
            raise _fail(f"sqrt of a negative number ({x})", node)
        return math.sqrt(x)
    if f == "log2":
        if x <= 0:
            raise _fail(f"log2 of a non-positive number ({x})", node)
        return math.log2(x)
    if f == "ceil":
        return math.ceil(x)
    if f == "floor":
        return math.floor(x)
    if f == "round":  # half to even, as Python and numpy round
        return round(x)
    raise _fail(f"unknown function '{f}'", node)


def to_integer(value: Value, node, what: str) -> int:
    """``value`` as an int, refusing a non-integral value with a hint to round explicitly."""
    if isinstance(value, bool):
        raise _fail(f"{what} must be an integer, got {value}", node)
    if isinstance(value, int):
        return value
    nearest = round(value)
    if abs(value - nearest) <= _INTEGRAL_TOLERANCE * max(1.0, abs(value)):
        return int(nearest)
    raise _fail(
        f"{what} must be an integer, got {value:.6g}; round it explicitly with round(), floor()"
        " or ceil()",
        node,
    )
