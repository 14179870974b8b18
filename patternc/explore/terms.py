"""The top-level union terms of a head's expression: what the explorer names as the reason a pair
is allowed.

``causal & (window(256) | global(16))`` allows exactly what ``causal & window(256)`` or
``causal & global(16)`` allows, so its terms are ``window(256)`` and ``global(16)``, each under
``causal``. Unions are flattened, an intersection distributes over a union on one side, a
difference over a union on its left; anything else is one term. Each term is lowered on its own,
with the head's layer, head index and parameters, so that the explorer can say which terms allow
a block or a pair.

>>> [t.label for t in head_terms(patternc.compile("causal & (window(256) | global(16))", n=4096), 0, 0)]
['window(256)', 'global(16)']
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from patternc.compiled import CompiledPattern
from patternc.lang import ast, parse, unparse
from patternc.lower.bind import Scope, lower
from patternc.lower.node import Lowered

__all__ = ["MAX_TERMS", "Term", "head_terms"]

MAX_TERMS = 16  # the page keeps one bit per term and cell (uint16); later terms are merged into one


@dataclass(frozen=True, slots=True)
class Term:
    """One term: ``label`` as written in the union, ``text`` the whole term that is lowered
    (``causal & window(256)``), and ``node`` its lowered form at this (layer, head)."""

    label: str
    text: str
    node: Lowered


def _split(tree: ast.Pattern) -> list[tuple[ast.Pattern, ast.Pattern]]:
    """(label, whole term) pairs whose union is ``tree``."""
    if isinstance(tree, ast.Union):
        return _split(tree.left) + _split(tree.right)
    if isinstance(tree, ast.Intersect):
        left, right = _split(tree.left), _split(tree.right)
        if len(right) > 1 and len(left) == 1:
            return [(label, ast.Intersect(tree.left, whole)) for label, whole in right]
        if len(left) > 1 and len(right) == 1:
            return [(label, ast.Intersect(whole, tree.right)) for label, whole in left]
    if isinstance(tree, ast.Difference):
        left = _split(tree.left)
        if len(left) > 1:
            return [(label, ast.Difference(whole, tree.right)) for label, whole in left]
    return [(tree, tree)]


def head_terms(cp: CompiledPattern, layer: int, head: int) -> tuple[Term, ...]:
    """The union terms of the expression at (layer, head), lowered there; at most ``MAX_TERMS``
    (the rest merged into a last term labelled ``other terms``)."""
    parts = _split(parse(cp.expression(layer, head)))
    if len(parts) > MAX_TERMS:
        rest = parts[MAX_TERMS - 1 :]
        merged = reduce(ast.Union, [whole for _, whole in rest])
        parts = [*parts[: MAX_TERMS - 1], (None, merged)]
    scope = Scope(cp.grid, layer, head, cp.layers, cp.heads, cp.params)
    return tuple(Term("other terms" if label is None else unparse(label), unparse(whole),
                      lower(whole, cp.grid, scope)) for label, whole in parts)
