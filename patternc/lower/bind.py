"""Binding: a syntax tree plus ``n``, layer, head and parameters -> a lowered tree.

Here numeric arguments get their values and are checked against their kinds (a count is an
integer >= 1, a position lies in [0, n), ...); then each primitive's entry (``patternc.primitives``)
builds its lowered node. Values past ``n`` mean the same as ``n`` (``window(10**9)`` is every pair
within the sequence), so entries clamp them, which keeps every later computation inside int64.

>>> from patternc.lang import parse
>>> lower(parse("causal & window(4)"), Grid(64, 16, 16))
Band(lo=0, hi=3)
"""

from __future__ import annotations

from collections.abc import Mapping

from patternc.errors import PatternMeaningError, brief
from patternc.lang import ast
from patternc.lang.check import bind_arguments
from patternc.lang.numeric import Value, evaluate, to_integer
from patternc.lower import algebra
from patternc.lower.grid import Grid
from patternc.lower.node import Lowered
from patternc.lower.rules import simplify
from patternc.primitives import LIST_KINDS, PRIMITIVES

__all__ = ["Scope", "lower"]


class Scope:
    """What names mean while binding: the grid, layer/head indices and counts, parameters."""

    __slots__ = ("grid", "head", "heads", "layer", "layers", "params")

    def __init__(self, grid: Grid, layer: int = 0, head: int = 0, layers: int = 1, heads: int = 1,
                 params: Mapping[str, Value] | None = None) -> None:
        self.grid, self.layer, self.head = grid, layer, head
        self.layers, self.heads = layers, heads
        self.params = dict(params or {})

    @property
    def names(self) -> dict[str, int]:
        return {"n": self.grid.n, "l": self.layer, "h": self.head, "L": self.layers, "H": self.heads}


def lower(tree: ast.Pattern, grid: Grid, scope: Scope | None = None) -> Lowered:
    """Lower a checked syntax tree at one (layer, head); raises ``PatternMeaningError``."""
    scope = scope or Scope(grid)
    if isinstance(tree, ast.Primitive):
        return _primitive(tree, scope)
    if isinstance(tree, ast.Complement):
        return simplify(algebra.Complement(lower(tree.operand, grid, scope)))
    combine = {ast.Union: algebra.Union, ast.Intersect: algebra.Intersect,
               ast.Difference: algebra.Difference}[type(tree)]
    return simplify(combine(lower(tree.left, grid, scope), lower(tree.right, grid, scope)))


def _fail(message: str, node) -> PatternMeaningError:
    return PatternMeaningError(message, pos=node.span[0], end=node.span[1])


def _values(prim: ast.Primitive, scope: Scope) -> dict[str, int | tuple[int, ...]]:
    """Evaluate and check every argument of a primitive against its kind."""
    n = scope.grid.n
    kinds = {arg.name: arg.kind for arg in PRIMITIVES[prim.name].args}
    values: dict[str, int | tuple[int, ...]] = {}
    for name, arg in bind_arguments(prim).items():
        kind, what = kinds[name], f"{prim.name}'s argument '{name}'"
        if isinstance(arg, ast.Param) and kind in LIST_KINDS:  # a list bound at compile time
            if arg.id not in scope.params:
                bound = ", ".join(sorted(scope.params)) or "none"
                raise _fail(f"parameter ${arg.id} is not bound (bound: {bound}); pass "
                            f"params={{'{arg.id}': [...]}}", arg)
            bound = scope.params[arg.id]
            if not isinstance(bound, tuple):
                raise _fail(f"{what} takes a list, but parameter ${arg.id} is the number {brief(bound)}", arg)
            arg = ast.ListArg(tuple(ast.Num(v, arg.span) for v in bound), arg.span)
        if isinstance(arg, ast.ListArg):
            items = []
            for item in arg.items:
                v = to_integer(evaluate(item, scope.names, scope.params), item, f"an entry of {what}")
                if kind == "indices" and not 0 <= v < n:
                    raise _fail(f"position {v} in {what} is outside the sequence [0, {n})", item)
                if kind == "offsets" and not -n < v < n:
                    raise _fail(f"offset {v} in {what} is outside ({-n}, {n}) for n = {n}", item)
                if kind == "counts" and v < 1:
                    raise _fail(f"every entry of {what} must be at least 1, got {v}", item)
                items.append(v)
            # positions and offsets are sets; sizes and kernels keep their order
            values[name] = tuple(items) if kind == "counts" else tuple(sorted(set(items)))
            continue
        v = to_integer(evaluate(arg, scope.names, scope.params), arg, what)
        if kind == "count" and v < 1:
            raise _fail(f"{what} must be at least 1, got {v}", arg)
        if kind == "seed" and v < 0:
            raise _fail(f"{what} must be a non-negative integer, got {v}", arg)
        values[name] = v
    return values


def _primitive(prim: ast.Primitive, scope: Scope) -> Lowered:
    values = _values(prim, scope)
    try:
        return PRIMITIVES[prim.name].build(scope, **values)
    except PatternMeaningError as err:  # values fine one by one but not together: point at the call
        if err.pos is None:
            raise _fail(err.message, prim) from None
        raise
