"""Which term of a head's expression a consumer cannot take: the innermost one that fails alone.

An export that can express only some patterns (FlashMask's column intervals) says which part of
the expression is to blame: each sub-expression is lowered on its own at the head's layer, head
and parameters, innermost first, and the first that fails the consumer's test is named.

>>> cp = patternc.compile("causal & (window(64) | stride(16))", n=512)
>>> first_failing_term(cp, 0, 0, lambda node, layout: layout.nnz > 10)  # stores more than 10 blocks
'stride(16)'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from patternc.lang import ast, parse, unparse
from patternc.layout import Layout
from patternc.lower.bind import Scope, lower

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.lower.node import Lowered

__all__ = ["first_failing_term", "pattern_terms"]


def pattern_terms(tree: ast.Pattern) -> list[ast.Pattern]:
    """Every pattern sub-expression of ``tree``, children before parents (``tree`` last)."""
    order: list[ast.Pattern] = []
    stack: list[tuple[ast.Pattern, bool]] = [(tree, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded or isinstance(node, ast.Primitive):
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(ast.children(node)))
    return order


def first_failing_term(cp: CompiledPattern, layer: int, head: int,
                       fails: Callable[[Lowered, Layout], bool]) -> str | None:
    """The text of the innermost sub-expression of (layer, head)'s expression for which
    ``fails(node, layout)`` holds, lowered alone on ``cp``'s grid; None if none does."""
    grid = cp.grid
    scope = Scope(grid, layer, head, cp.layers, cp.heads, cp.params)
    for term in pattern_terms(parse(cp.expression(layer, head))):
        node = lower(term, grid, scope)
        if fails(node, Layout.from_blocks(node.enumerate(grid), grid)):
            return unparse(term)
    return None
