"""Binding: a syntax tree plus ``n``, layer, head and parameters -> a lowered tree.

Here numeric arguments get their values, are checked against their primitive's contract (a count
is an integer >= 1, a position lies in [0, n), ...) and the primitives become lowered nodes.
Values past ``n`` mean the same as ``n`` (``window(10**9)`` is every pair within the sequence), so
they are clamped, which keeps every later computation inside int64.

>>> lower(parse("causal & window(4)"), Grid(64, 16, 16))
Band(lo=0, hi=3)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from patternc.errors import PatternMeaningError
from patternc.lang import ast
from patternc.lang.check import SIGNATURES, bind_arguments
from patternc.lang.numeric import Value, evaluate, to_integer
from patternc.lower import algebra
from patternc.lower.diffs import Band, Diagonals, Dilated, Stride
from patternc.lower.grid import Grid
from patternc.lower.node import Lowered
from patternc.lower.random_blocks import RandomBlocks
from patternc.lower.regions import (
    Chunk,
    Columns,
    Everything,
    Global,
    Nothing,
    PeriodicColumns,
    Prefix,
    Sink,
    Tokens,
)
from patternc.lower.rules import simplify

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
    kinds = {p.name: p.kind for p in SIGNATURES[prim.name]}
    values: dict[str, int | tuple[int, ...]] = {}
    for name, arg in bind_arguments(prim).items():
        kind, what = kinds[name], f"{prim.name}'s argument '{name}'"
        if isinstance(arg, ast.ListArg):
            items = []
            for item in arg.items:
                v = to_integer(evaluate(item, scope.names, scope.params), item, f"an entry of {what}")
                if kind == "indices" and not 0 <= v < n:
                    raise _fail(f"position {v} in {what} is outside the sequence [0, {n})", item)
                if kind == "offsets" and not -n < v < n:
                    raise _fail(f"offset {v} in {what} is outside ({-n}, {n}) for n = {n}", item)
                items.append(v)
            values[name] = tuple(sorted(set(items)))
            continue
        v = to_integer(evaluate(arg, scope.names, scope.params), arg, what)
        if kind == "count" and v < 1:
            raise _fail(f"{what} must be at least 1, got {v}", arg)
        if kind == "seed" and v < 0:
            raise _fail(f"{what} must be a non-negative integer, got {v}", arg)
        values[name] = v
    return values


def _primitive(prim: ast.Primitive, scope: Scope) -> Lowered:
    v = _values(prim, scope)
    grid, n = scope.grid, scope.grid.n
    return _FACTORIES[prim.name](prim, v, scope, grid, n)


def _band(prim, v, scope, grid, n) -> Lowered:
    lo, hi = v["lo"], v["hi"]
    if lo > hi:
        raise _fail(f"band(lo, hi) needs lo <= hi, got lo = {lo} > hi = {hi}", prim)
    return Band(max(lo, -n), min(hi, n))


def _fixed(prim, v, scope, grid, n) -> Lowered:
    c, s = v["c"], v["s"]
    if s > c:
        raise _fail(f"fixed(c, s) needs s <= c (s summary keys per chunk of c), got s = {s} > c = {c}", prim)
    if c >= n:  # one chunk holds the whole sequence
        return Everything()
    return algebra.Union(Chunk(c), PeriodicColumns(c, s))


def _random(prim, v, scope, grid, n) -> Lowered:
    return RandomBlocks(min(v["r"], grid.nbk), v["seed"], scope.layer, scope.head, grid.bq, grid.bk, n)


_FACTORIES: dict[str, Callable[..., Lowered]] = {
    "all": lambda prim, v, scope, grid, n: Everything(),
    "none": lambda prim, v, scope, grid, n: Nothing(),
    "causal": lambda prim, v, scope, grid, n: Band(0, n),
    "window": lambda prim, v, scope, grid, n: Band(1 - min(v["w"], n + 1), min(v["w"], n + 1) - 1),
    "band": _band,
    "dilated": lambda prim, v, scope, grid, n: Dilated(min(v["w"], n), min(v["d"], n)),
    "stride": lambda prim, v, scope, grid, n: Stride(min(v["s"], n)),
    "fixed": _fixed,
    "chunk": lambda prim, v, scope, grid, n: Chunk(min(v["c"], n)),
    "sink": lambda prim, v, scope, grid, n: Sink(min(v["g"], n)),
    "global": lambda prim, v, scope, grid, n: Global(min(v["g"], n)),
    "tokens": lambda prim, v, scope, grid, n: Tokens(v["positions"], n),
    "columns": lambda prim, v, scope, grid, n: Columns(v["positions"], n),
    "diagonals": lambda prim, v, scope, grid, n: Diagonals(v["offsets"], n),
    "prefix": lambda prim, v, scope, grid, n: Prefix(min(v["p"], n)),
    "random": _random,
}
