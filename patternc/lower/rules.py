"""Simplifications of lowered trees, as a table of (node type, rewrite) rules.

Each rewrite returns an equivalent, simpler node or None when it does not apply; its identity is
in the comment beside it. Rules only ever make enumeration cheaper (``causal & window(w)`` becomes
one band, enumerated once instead of a dense causal side classified against a window), never change
the meaning: the oracle tests compare every result pair by pair.

>>> simplify(Intersect(Band(0, 4096), Band(-511, 511)))
Band(lo=0, hi=511)
"""

from __future__ import annotations

from collections.abc import Callable

from patternc.lower.algebra import Complement, Difference, Intersect, Union
from patternc.lower.node import Lowered
from patternc.primitives.offsets import Band
from patternc.primitives.positions import Everything, Nothing

__all__ = ["RULES", "simplify"]

ALL, NONE = Everything(), Nothing()


def _band_or_none(lo: int, hi: int) -> Lowered:
    return Band(lo, hi) if lo <= hi else NONE


Rule = Callable[[Lowered], Lowered | None]

RULES: list[tuple[type, Rule]] = [
    # A | A = A;  A & A = A
    (Union, lambda x: x.left if x.left == x.right else None),
    (Intersect, lambda x: x.left if x.left == x.right else None),
    # A | all = all;  A | none = A  (both orders)
    (Union, lambda x: ALL if ALL in (x.left, x.right) else None),
    (Union, lambda x: x.right if x.left == NONE else x.left if x.right == NONE else None),
    # A & none = none;  A & all = A  (both orders)
    (Intersect, lambda x: NONE if NONE in (x.left, x.right) else None),
    (Intersect, lambda x: x.right if x.left == ALL else x.left if x.right == ALL else None),
    # A - none = A;  none - A = none;  A - all = none
    (Difference, lambda x: x.left if x.right == NONE else None),
    (Difference, lambda x: NONE if x.left == NONE or x.right == ALL else None),
    # ~~A = A;  ~all = none;  ~none = all
    (Complement, lambda x: x.operand.operand if isinstance(x.operand, Complement) else None),
    (Complement, lambda x: NONE if x.operand == ALL else ALL if x.operand == NONE else None),
    # [a, b] & [c, d] = [max(a, c), min(b, d)]: offsets in both intervals
    (Intersect, lambda x: _band_or_none(max(x.left.lo, x.right.lo), min(x.left.hi, x.right.hi))
     if isinstance(x.left, Band) and isinstance(x.right, Band) else None),
    # [a, b] | [c, d] = [min(a, c), max(b, d)] when the intervals overlap or touch
    (Union, lambda x: Band(min(x.left.lo, x.right.lo), max(x.left.hi, x.right.hi))
     if isinstance(x.left, Band) and isinstance(x.right, Band)
     and max(x.left.lo, x.right.lo) <= min(x.left.hi, x.right.hi) + 1 else None),
]


def simplify(node: Lowered) -> Lowered:
    """Apply the rules at the root until none fires (children are simplified as they are built)."""
    changed = True
    while changed:
        changed = False
        for kind, rewrite in RULES:
            if isinstance(node, kind):
                replacement = rewrite(node)
                if replacement is not None:
                    node, changed = replacement, True
                    break
    return node
