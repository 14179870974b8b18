"""Lowered patterns as data for the page's token predicate (``allowedBy`` in static/explorer.js).

The page evaluates the exact token predicate itself, so it can zoom to tokens anywhere, at any
``n``, with the block kinds taken from the compiled layout. Each lowered node type maps to one
small record here and one line of JavaScript there; ``tests/test_browser_explorer.py`` checks the
two against ``CompiledPattern.allows`` pair by pair for every primitive and combinator, and
``tests/test_explore.py`` that every ``Lowered`` type has a record. A new primitive needs both.

>>> from patternc.lang import parse
>>> from patternc.lower.bind import lower
>>> from patternc.lower.grid import Grid
>>> predicate_tree(lower(parse("causal & window(4)"), Grid(64, 16, 16)))
{'op': 'band', 'lo': 0, 'hi': 3}
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from patternc.errors import PatternError
from patternc.explore.encode import packed
from patternc.lower import algebra
from patternc.lower.node import Lowered
from patternc.primitives.documents import Documents
from patternc.primitives.neighborhood import Neighborhood
from patternc.primitives.offsets import Band, Diagonals, Dilated, Stride
from patternc.primitives.positions import (
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
from patternc.primitives.random_blocks import RandomBlocks, random_block_table

__all__ = ["RECORDS", "predicate_tree", "tree_bytes"]


def _positions(values: tuple[int, ...]) -> dict:
    return packed(np.asarray(values, np.int32))


def _random(node: RandomBlocks) -> dict:
    nbq, nbk = -(-node.n // node.bq), -(-node.n // node.bk)
    table = random_block_table(node.seed, node.layer, node.head, node.r, nbq, nbk)  # (nbq, r)
    return {"op": "random", "bq": node.bq, "bk": node.bk, "r": node.r,
            "table": packed(table.astype(np.int32))}


def _binary(op: str) -> Callable[[Lowered], dict]:
    return lambda node: {"op": op, "left": predicate_tree(node.left), "right": predicate_tree(node.right)}


# Lowered type -> its record; the page's allowedBy() has one case per "op".
RECORDS: dict[type, Callable[[Lowered], dict]] = {
    Everything: lambda node: {"op": "all"},
    Nothing: lambda node: {"op": "none"},
    Band: lambda node: {"op": "band", "lo": node.lo, "hi": node.hi},  # lo <= q - k <= hi
    Stride: lambda node: {"op": "stride", "s": node.s},  # (q - k) % s == 0
    Dilated: lambda node: {"op": "dilated", "d": node.d, "reach": node.reach},  # every d-th, |q - k| <= reach
    Diagonals: lambda node: {"op": "diagonals", "offsets": _positions(node.offsets)},  # q - k listed
    Chunk: lambda node: {"op": "chunk", "c": node.c},  # q // c == k // c
    Sink: lambda node: {"op": "sink", "g": node.g},  # k < g
    Global: lambda node: {"op": "global", "g": node.g},  # q < g or k < g
    Prefix: lambda node: {"op": "prefix", "p": node.p},  # q < p and k < p
    Tokens: lambda node: {"op": "tokens", "positions": _positions(node.positions)},  # q or k listed
    Columns: lambda node: {"op": "columns", "positions": _positions(node.positions)},  # k listed
    PeriodicColumns: lambda node: {"op": "periodic", "c": node.c, "s": node.s},  # k % c >= c - s
    RandomBlocks: _random,  # key block drawn for the query block
    Documents: lambda node: {"op": "documents", "starts": _positions(node.starts)},  # same document
    Neighborhood: lambda node: {"op": "neighborhood", "size": list(node.size), "kernel": list(node.kernel)},
    algebra.Union: _binary("union"),
    algebra.Intersect: _binary("intersect"),
    algebra.Difference: _binary("difference"),
    algebra.Complement: lambda node: {"op": "complement", "operand": predicate_tree(node.operand)},
}


def predicate_tree(node: Lowered) -> dict:
    """The record of ``node`` and its children, for the page's evaluator."""
    record = RECORDS.get(type(node))
    if record is None:
        raise PatternError(f"the explorer page cannot evaluate {type(node).__name__} yet: add it to "
                           "patternc/explore/evaluator.py and to allowedBy() in its static/explorer.js")
    return record(node)


def tree_bytes(tree: dict) -> int:
    """About how many bytes a tree takes in the page (its packed arrays dominate)."""
    size = 64
    for value in tree.values():
        if isinstance(value, dict):
            size += len(value.get("data", "")) if "data" in value else tree_bytes(value)
    return size
