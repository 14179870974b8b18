"""Set algebra on lowered patterns: union, intersection, difference, complement.

Kinds combine by a small table (EMPTY < PARTIAL < FULL; union is max, intersection min). Three
cells are undecided by the children's kinds alone and are settled exactly by counting pairs
(``resolve``): PARTIAL | PARTIAL (maybe FULL), PARTIAL & PARTIAL and PARTIAL - PARTIAL (maybe EMPTY).

Enumeration never touches more than the blocks it produces plus its operands': a union merges its
operands' sorted blocks; an intersection enumerates its sparser side and classifies the other on
those blocks only; a difference enumerates its left side. Only a complement is dense, by nature.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np

from patternc.lower.grid import EMPTY, FULL, KIND, PARTIAL, Blocks, Grid, every_block
from patternc.lower.node import BLOCK_BYTES, MERGE_BYTES, Lowered, resolve, resolve_bytes

__all__ = ["Complement", "Difference", "Intersect", "Union", "merge_union"]


class _Binary(Lowered):
    """A set operation on two lowered patterns, ``left`` and ``right``."""

    __slots__ = ()
    left: Lowered
    right: Lowered

    @abstractmethod
    def _table(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Kinds from the children's kinds; PARTIAL where the table cannot decide."""

    def _combine(self, grid: Grid, i, j, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        kinds = self._table(a, b).astype(KIND)
        undecided = (a == PARTIAL) & (b == PARTIAL)  # the one undecided cell of every table
        if undecided.any():
            kinds[undecided] = resolve(self, grid, i[undecided], j[undecided])
        return kinds

    def classify(self, grid, i, j):
        return self._combine(grid, i, j, self.left.classify(grid, i, j), self.right.classify(grid, i, j))

    def _classify_against(self, base: Blocks, other: Lowered, grid: Grid, base_is_left: bool) -> Blocks:
        """Kinds of ``base``'s blocks, classifying the other operand on those blocks only."""
        theirs = other.classify(grid, base.rows, base.cols)
        a, b = (base.kinds, theirs) if base_is_left else (theirs, base.kinds)
        return Blocks(base.rows, base.cols, self._combine(grid, base.rows, base.cols, a, b)).nonempty()

    def candidates(self, grid):
        blocks = self.enumerate(grid)
        return blocks.rows, blocks.cols

    def block_key(self, grid, i, j):
        return (*self.left.block_key(grid, i, j), *self.right.block_key(grid, i, j))

    def terms(self):
        return self.left.terms() + self.right.terms()

    def partial_hint(self, grid):
        # a block is PARTIAL in the result only where an operand holds it partially
        return min(self.size_hint(grid), self.left.partial_hint(grid) + self.right.partial_hint(grid))

    def _undecided(self, grid: Grid, m: float) -> float:
        """At most how many of ``m`` blocks both operands hold partially, to be counted (``resolve``)."""
        return min(m, self.left.partial_hint(grid), self.right.partial_hint(grid))

    def classify_bytes(self, grid, m):
        # the left kinds are held while the right side classifies; then the table and the counting
        return max(self.left.classify_bytes(grid, m), m + self.right.classify_bytes(grid, m),
                   5 * m + resolve_bytes(self, self._undecided(grid, m)))

    def _against_bytes(self, base: Lowered, other: Lowered, grid: Grid) -> float:
        """``_classify_against``'s peak: the base's blocks enumerated, then held while the other side
        classifies them, the kinds combine (the undecided ones counted) and the survivors are copied."""
        h = base.size_hint(grid)
        counted = resolve_bytes(self, self._undecided(grid, h))
        held = max(other.classify_bytes(grid, h), 6 * h + counted, (BLOCK_BYTES + 1) * h)
        return max(base.enumerate_bytes(grid), BLOCK_BYTES * h + held)


def merge_union(parts: list[Blocks], union: Lowered, grid: Grid) -> Blocks:
    """The blocks of ``union`` from the sorted blocks of its operands: FULL where any part is, and
    a block that several parts hold only partially settled by counting pairs of ``union``."""
    if not sum(map(len, parts)):  # nothing to merge (reduceat needs a non-empty input)
        return Blocks.empty()
    keys = np.concatenate([part.keys(grid) for part in parts])
    kinds = np.concatenate([part.kinds for part in parts])
    order = np.argsort(keys, kind="stable")  # sorted runs: a linear merge
    keys, kinds = keys[order], kinds[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    merged = np.maximum.reduceat(kinds, starts)
    shared = np.diff(np.append(starts, len(keys))) > 1
    keys = keys[starts]
    rows, cols = keys // grid.nbk, keys % grid.nbk
    undecided = shared & (merged == PARTIAL)  # stored by several parts, full in none
    if undecided.any():
        merged[undecided] = resolve(union, grid, rows[undecided], cols[undecided])
    return Blocks(rows, cols, merged)


@dataclass(frozen=True, slots=True)
class Union(_Binary):
    left: Lowered
    right: Lowered

    def _table(self, a, b):
        return np.maximum(a, b)

    def enumerate(self, grid):
        return merge_union([self.left.enumerate(grid), self.right.enumerate(grid)], self, grid)

    def enumerate_bytes(self, grid):
        # the left blocks are held while the right enumerates; then both are merged, and the
        # blocks both hold partially are counted
        left, right = self.left.size_hint(grid), self.right.size_hint(grid)
        counted = resolve_bytes(self, self._undecided(grid, left))
        return max(self.left.enumerate_bytes(grid), BLOCK_BYTES * left + self.right.enumerate_bytes(grid),
                   (BLOCK_BYTES + MERGE_BYTES) * (left + right) + counted)

    def predicate(self, q, k):
        return self.left.predicate(q, k) | self.right.predicate(q, k)

    def lookback(self, n):
        return max(self.left.lookback(n), self.right.lookback(n))

    def forever(self, n):
        return tuple(dict.fromkeys((*self.left.forever(n), *self.right.forever(n))))

    def size_hint(self, grid):
        return min(self.left.size_hint(grid) + self.right.size_hint(grid), grid.nbq * grid.nbk)


@dataclass(frozen=True, slots=True)
class Intersect(_Binary):
    left: Lowered
    right: Lowered

    def _table(self, a, b):
        return np.minimum(a, b)

    def enumerate(self, grid):
        if self.right.size_hint(grid) < self.left.size_hint(grid):
            return self._classify_against(self.right.enumerate(grid), self.left, grid, base_is_left=False)
        return self._classify_against(self.left.enumerate(grid), self.right, grid, base_is_left=True)

    def enumerate_bytes(self, grid):
        if self.right.size_hint(grid) < self.left.size_hint(grid):
            return self._against_bytes(self.right, self.left, grid)
        return self._against_bytes(self.left, self.right, grid)

    def predicate(self, q, k):
        return self.left.predicate(q, k) & self.right.predicate(q, k)

    def lookback(self, n):
        return min(self.left.lookback(n), self.right.lookback(n))  # an upper bound

    def forever(self, n):
        left, right = self.left.forever(n), self.right.forever(n)
        if not (left and right):  # keys both sides keep, or none
            return ()
        # `causal & X` keeps keys because of X: the envelope is not the reason
        terms = [t for t in (*left, *right) if t != "causal"] or [*left, *right]
        return tuple(dict.fromkeys(terms))

    def progression(self, n):
        # a progression cut by a band (lo <= q - k <= hi) is the progression's run of multiples in it
        for band, other in ((self.left, self.right), (self.right, self.left)):
            cut, inner = band.progression(n), other.progression(n)
            if cut is not None and cut[0] == 1 and inner is not None:
                step, m_lo, m_hi = inner
                return step, max(m_lo, -(-cut[1] // step)), min(m_hi, cut[2] // step)
        return None

    def size_hint(self, grid):
        return min(self.left.size_hint(grid), self.right.size_hint(grid))


@dataclass(frozen=True, slots=True)
class Difference(_Binary):
    left: Lowered
    right: Lowered

    def _table(self, a, b):
        return np.where(b == FULL, EMPTY, np.where(b == EMPTY, a, np.minimum(a, PARTIAL)))

    def enumerate(self, grid):
        return self._classify_against(self.left.enumerate(grid), self.right, grid, base_is_left=True)

    def enumerate_bytes(self, grid):
        return self._against_bytes(self.left, self.right, grid)

    def predicate(self, q, k):
        return self.left.predicate(q, k) & ~self.right.predicate(q, k)

    def lookback(self, n):
        return self.left.lookback(n)  # an upper bound

    def forever(self, n):
        return self.left.forever(n)

    def size_hint(self, grid):
        return self.left.size_hint(grid)


@dataclass(frozen=True, slots=True)
class Complement(Lowered):
    operand: Lowered

    def classify(self, grid, i, j):
        return (FULL - self.operand.classify(grid, i, j)).astype(KIND)

    def candidates(self, grid):
        return every_block(grid)

    def predicate(self, q, k):
        return ~self.operand.predicate(q, k)

    def describe(self, n):
        return f"~({self.operand.describe(n)})"

    def block_key(self, grid, i, j):
        return self.operand.block_key(grid, i, j)

    def size_hint(self, grid):
        return float(grid.nbq * grid.nbk)

    def terms(self):
        return self.operand.terms()

    def partial_hint(self, grid):
        return self.operand.partial_hint(grid)

    def classify_bytes(self, grid, m):
        return self.operand.classify_bytes(grid, m) + 2 * m

    def enumerate_bytes(self, grid):
        # every block's row and column, the operand classifying them all, the non-empty ones copied out
        every = self.size_hint(grid)
        return 16 * every + max(self.classify_bytes(grid, every), (BLOCK_BYTES + 2) * every)
