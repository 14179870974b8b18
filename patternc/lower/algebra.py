"""Set algebra on lowered patterns: union, intersection, difference, complement.

Kinds combine by a small table (EMPTY < PARTIAL < FULL; union is max, intersection min). Three
cells are undecided by the children's kinds alone and are settled exactly by counting pairs
(``resolve``): PARTIAL | PARTIAL (maybe FULL), PARTIAL & PARTIAL and PARTIAL - PARTIAL (maybe EMPTY).

Enumeration never touches more than the blocks it produces plus its operands': a union merges its
operands' sorted blocks; an intersection enumerates its sparser side and classifies the other on
those blocks only; a difference enumerates its left side. Only a complement is dense, by nature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patternc.lower.grid import EMPTY, FULL, KIND, PARTIAL, Blocks, Grid
from patternc.lower.node import Lowered, resolve
from patternc.lower.regions import Everything

__all__ = ["Complement", "Difference", "Intersect", "Union"]


def _settle(node: Lowered, grid: Grid, i, j, kinds: np.ndarray, undecided: np.ndarray) -> np.ndarray:
    if undecided.any():
        kinds = kinds.copy()
        kinds[undecided] = resolve(node, grid, i[undecided], j[undecided])
    return kinds


@dataclass(frozen=True, slots=True)
class Union(Lowered):
    left: Lowered
    right: Lowered

    def _combine(self, grid, i, j, a, b):
        return _settle(self, grid, i, j, np.maximum(a, b), (a == PARTIAL) & (b == PARTIAL))

    def classify(self, grid, i, j):
        return self._combine(grid, i, j, self.left.classify(grid, i, j), self.right.classify(grid, i, j))

    def enumerate(self, grid):
        a, b = self.left.enumerate(grid), self.right.enumerate(grid)
        keys = np.concatenate([a.keys(grid), b.keys(grid)])
        kinds = np.concatenate([a.kinds, b.kinds])
        order = np.argsort(keys, kind="stable")  # two sorted runs: a linear merge
        keys, kinds = keys[order], kinds[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        merged = np.maximum.reduceat(kinds, starts) if len(keys) else kinds
        both = np.diff(np.append(starts, len(keys))) == 2
        keys = keys[starts]
        rows, cols = keys // grid.nbk, keys % grid.nbk
        kinds = _settle(self, grid, rows, cols, merged, both & (merged == PARTIAL))
        return Blocks(rows, cols, kinds)

    def candidates(self, grid):
        blocks = self.enumerate(grid)
        return blocks.rows, blocks.cols

    def predicate(self, q, k):
        return self.left.predicate(q, k) | self.right.predicate(q, k)

    def block_key(self, grid, i, j):
        return (*self.left.block_key(grid, i, j), *self.right.block_key(grid, i, j))

    def size_hint(self, grid):
        return min(self.left.size_hint(grid) + self.right.size_hint(grid), grid.nbq * grid.nbk)


@dataclass(frozen=True, slots=True)
class Intersect(Lowered):
    left: Lowered
    right: Lowered

    def _combine(self, grid, i, j, a, b):
        return _settle(self, grid, i, j, np.minimum(a, b), (a == PARTIAL) & (b == PARTIAL))

    def classify(self, grid, i, j):
        return self._combine(grid, i, j, self.left.classify(grid, i, j), self.right.classify(grid, i, j))

    def enumerate(self, grid):
        sparse, other = self.left, self.right
        if other.size_hint(grid) < sparse.size_hint(grid):
            sparse, other = other, sparse
        base = sparse.enumerate(grid)
        kinds = self._combine(grid, base.rows, base.cols, base.kinds, other.classify(grid, base.rows, base.cols))
        return Blocks(base.rows, base.cols, kinds).nonempty()

    def candidates(self, grid):
        blocks = self.enumerate(grid)
        return blocks.rows, blocks.cols

    def predicate(self, q, k):
        return self.left.predicate(q, k) & self.right.predicate(q, k)

    def block_key(self, grid, i, j):
        return (*self.left.block_key(grid, i, j), *self.right.block_key(grid, i, j))

    def size_hint(self, grid):
        return min(self.left.size_hint(grid), self.right.size_hint(grid))


@dataclass(frozen=True, slots=True)
class Difference(Lowered):
    left: Lowered
    right: Lowered

    def _combine(self, grid, i, j, a, b):
        kinds = np.where(b == FULL, EMPTY, np.where(b == EMPTY, a, np.minimum(a, PARTIAL)))
        return _settle(self, grid, i, j, kinds.astype(KIND), (a == PARTIAL) & (b == PARTIAL))

    def classify(self, grid, i, j):
        return self._combine(grid, i, j, self.left.classify(grid, i, j), self.right.classify(grid, i, j))

    def enumerate(self, grid):
        base = self.left.enumerate(grid)
        kinds = self._combine(grid, base.rows, base.cols, base.kinds, self.right.classify(grid, base.rows, base.cols))
        return Blocks(base.rows, base.cols, kinds).nonempty()

    def candidates(self, grid):
        blocks = self.enumerate(grid)
        return blocks.rows, blocks.cols

    def predicate(self, q, k):
        return self.left.predicate(q, k) & ~self.right.predicate(q, k)

    def block_key(self, grid, i, j):
        return (*self.left.block_key(grid, i, j), *self.right.block_key(grid, i, j))

    def size_hint(self, grid):
        return self.left.size_hint(grid)


@dataclass(frozen=True, slots=True)
class Complement(Lowered):
    operand: Lowered

    def classify(self, grid, i, j):
        return (FULL - self.operand.classify(grid, i, j)).astype(KIND)

    def candidates(self, grid):
        return Everything().candidates(grid)

    def predicate(self, q, k):
        return ~self.operand.predicate(q, k)

    def block_key(self, grid, i, j):
        return self.operand.block_key(grid, i, j)

    def size_hint(self, grid):
        return float(grid.nbq * grid.nbk)
