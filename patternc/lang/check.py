"""Static checks on a parsed pattern: known primitives, fitting arguments, known names.

The primitives and their arguments come from their entries (``patternc.primitives``). Values are
checked later, when ``n`` and the parameters are known (see ``patternc.lower.bind``); here we
refuse what can never mean anything, such as ``windw(512)`` or ``window(w=1, w=2)``.
"""

from __future__ import annotations

import difflib

from patternc.errors import PatternMeaningError
from patternc.lang import ast
from patternc.primitives import PRIMITIVES

__all__ = ["FUNCTIONS", "NAMES", "bind_arguments", "check_pattern"]

NAMES = ("n", "l", "h", "L", "H")  # sequence length, layer, head, layer count, head count
FUNCTIONS = {  # numeric functions and how many arguments each takes (min, max)
    "min": (2, None),
    "max": (2, None),
    "sqrt": (1, 1),
    "log2": (1, 1),
    "ceil": (1, 1),
    "floor": (1, 1),
    "round": (1, 1),
}


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def bind_arguments(prim: ast.Primitive) -> dict[str, ast.Arg]:
    """Map a primitive's positional and named arguments onto its parameters.

    >>> from patternc.lang import parse
    >>> bind_arguments(parse("random(2, seed=7)"))
    {'r': Num(value=2), 'seed': Num(value=7)}
    """
    if prim.name not in PRIMITIVES:
        hint = _did_you_mean(prim.name, PRIMITIVES) or f"; primitives: {', '.join(sorted(PRIMITIVES))}"
        raise PatternMeaningError(
            f"unknown primitive '{prim.name}'{hint}",
            pos=prim.span[0], end=prim.span[0] + len(prim.name),
        )
    spec = PRIMITIVES[prim.name].args
    if len(prim.args) > len(spec):
        extra = prim.args[len(spec)]
        takes = f"takes {len(spec)} argument{'s' * (len(spec) != 1)}" if spec else "takes no arguments"
        raise PatternMeaningError(
            f"{prim.name} {takes}, got {len(prim.args)}", pos=extra.span[0], end=extra.span[1]
        )
    bound: dict[str, ast.Arg] = {p.name: a for p, a in zip(spec, prim.args, strict=False)}
    names = {p.name for p in spec}
    for key, value in prim.kwargs:
        if key not in names:
            options = ", ".join(sorted(names)) or "none"
            raise PatternMeaningError(
                f"{prim.name} has no argument '{key}' (its arguments: {options})",
                pos=value.span[0], end=value.span[1],
            )
        if key in bound:
            raise PatternMeaningError(
                f"{prim.name} got argument '{key}' twice", pos=value.span[0], end=value.span[1]
            )
        bound[key] = value
    for p in spec:
        if p.name not in bound:
            if p.default is None:
                raise PatternMeaningError(
                    f"{prim.name} is missing its argument '{p.name}'"
                    f" (it takes {', '.join(q.name for q in spec)})",
                    pos=prim.span[0], end=prim.span[1],
                )
            bound[p.name] = ast.Num(p.default)
        # a list argument is written [i, j, ...] or given whole as a parameter bound to a list
        given = bound[p.name]
        is_list = isinstance(given, ast.ListArg) or (p.is_list and isinstance(given, ast.Param))
        if p.is_list != is_list:
            node = bound[p.name]
            want = "a list such as [0, 1]" if p.is_list else "a number, not a list"
            raise PatternMeaningError(
                f"{prim.name}'s argument '{p.name}' must be {want}", pos=node.span[0], end=node.span[1]
            )
    return bound


def check_pattern(tree: ast.Pattern) -> None:
    """Raise ``PatternMeaningError`` for unknown primitives, names, functions or bad arguments."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Primitive):
            bind_arguments(node)
        elif isinstance(node, ast.Name) and node.id not in NAMES:
            hint = _did_you_mean(node.id, NAMES)
            if node.id in PRIMITIVES:
                hint = f" ('{node.id}' is a pattern; arguments are numbers)"
            raise PatternMeaningError(
                f"unknown name '{node.id}'{hint}; numbers may use {', '.join(NAMES)}"
                " and parameters such as $w",
                pos=node.span[0], end=node.span[1],
            )
        elif isinstance(node, ast.Call):
            _check_call(node)


def _check_call(node: ast.Call) -> None:
    if node.func not in FUNCTIONS:
        hint = _did_you_mean(node.func, FUNCTIONS)
        if node.func in PRIMITIVES:
            hint = f" ('{node.func}' is a pattern; arguments are numbers)"
        raise PatternMeaningError(
            f"unknown function '{node.func}'{hint}; functions: {', '.join(FUNCTIONS)}",
            pos=node.span[0], end=node.span[0] + len(node.func),
        )
    low, high = FUNCTIONS[node.func]
    if len(node.args) < low or (high is not None and len(node.args) > high):
        want = f"exactly {low}" if low == high else f"at least {low}"
        raise PatternMeaningError(
            f"{node.func} takes {want} argument{'s' * (want != 'exactly 1')}, got {len(node.args)}",
            pos=node.span[0], end=node.span[1],
        )
