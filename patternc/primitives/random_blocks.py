"""``random(r, seed=s)``: each query block attends r key blocks drawn at random (BigBird).

The draw is defined at block granularity, so its token meaning depends on the block size: with
blocks of 64 tokens, ``random(3)`` gives each query 3 x 64 random keys in 3 runs of 64. The blocks
of block row ``i`` are a uniform sample without replacement (Floyd's algorithm) driven by a
counter-based hash of (seed, layer, head, i, draw): the same inputs give the same blocks on every
machine and numpy version, independently of every other row, head and layer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache

import numpy as np

from patternc.lower.grid import EMPTY, FULL, KIND, lookup
from patternc.lower.node import Lowered
from patternc.primitives.registry import Arg, primitive

__all__ = ["RandomBlocks", "drawn_on_blocks", "random", "random_block_table"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on uint64 with good avalanche."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(*parts) -> np.ndarray:
    """Hash a sequence of uint64 arrays (broadcast) into one uint64 per element."""
    x = np.zeros((), np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            x = _mix(x + _GOLDEN + np.asarray(part, np.uint64))
    return x


@lru_cache(maxsize=256)
def random_block_table(seed: int, layer: int, head: int, r: int, nbq: int, nbk: int) -> np.ndarray:
    """(nbq, r) sorted key-block indices for each query block row; ``r <= nbk``."""
    rows = np.arange(nbq, dtype=np.uint64)
    chosen = np.empty((nbq, r), np.int64)
    for t, top in enumerate(range(nbk - r, nbk)):  # Floyd: draw from [0, top], fall back to top
        draw = (_hash(seed, layer, head, rows, t) % np.uint64(top + 1)).astype(np.int64)
        taken = (chosen[:, :t] == draw[:, None]).any(axis=1)
        chosen[:, t] = np.where(taken, top, draw)
    chosen.sort(axis=1)
    chosen.flags.writeable = False
    return chosen


@lru_cache(maxsize=256)
def _table_columns(seed: int, layer: int, head: int, r: int, nbq: int, nbk: int) -> tuple:
    """The table's columns as separate contiguous arrays, for lookups from a predicate."""
    table = random_block_table(seed, layer, head, r, nbq, nbk)
    return tuple(np.ascontiguousarray(table[:, t]) for t in range(r))


def drawn_on_blocks(node: Lowered) -> bool:
    """Whether ``random()`` is in the node: its draw is made on the blocks it was compiled with, so
    the same stack on other blocks (or on query blocks that start elsewhere) is another pattern."""
    if isinstance(node, RandomBlocks):
        return True
    return is_dataclass(node) and any(drawn_on_blocks(getattr(node, f.name)) for f in fields(node))


@dataclass(frozen=True, slots=True)
class RandomBlocks(Lowered):
    """r random key blocks per query block row, for one (layer, head) and block shape."""

    r: int  # at most the number of key blocks
    seed: int
    layer: int
    head: int
    bq: int
    bk: int
    n: int

    def _key(self) -> tuple[int, ...]:
        nbq, nbk = -(-self.n // self.bq), -(-self.n // self.bk)
        return self.seed, self.layer, self.head, self.r, nbq, nbk

    def _table(self) -> np.ndarray:
        return random_block_table(*self._key())

    def candidates(self, grid):
        table = self._table()[grid.first // self.bq:]  # the draws of the grid's rows (aligned: see compile)
        return np.repeat(np.arange(len(table), dtype=np.int64), self.r), table.reshape(-1)

    def classify(self, grid, i, j):
        q0, _ = grid.q_bounds(i)
        hit = (self._table()[q0 // self.bq] == j[:, None]).any(axis=1)  # the draw of the block's row
        return np.where(hit, FULL, EMPTY).astype(KIND)

    def predicate(self, q, k):
        row, col = q // self.bq, k // self.bk
        hit = (q < 0) & (k < 0)  # all false, in the broadcast shape
        for column in _table_columns(*self._key()):
            hit = hit | (lookup(column, row) == col)
        return hit

    def block_key(self, grid, i, j):
        return (self.classify(grid, i, j),)  # a drawn block is all allowed, any other all not

    def describe(self, n):
        return f"random({self.r}, seed={self.seed})"

    def size_hint(self, grid):
        return float(grid.nbq * self.r)


@primitive(Arg("r", doc="key blocks per query block"), Arg("seed", "seed", 0, doc="seed of the draw"),
           allows="r key blocks per query block, drawn from (seed, l, h, block row)",
           source="BigBird's random blocks", group="blocks")
def random(scope, r: int, seed: int) -> Lowered:
    """Each query block attends ``r`` key blocks drawn without replacement, the same on every
    machine for the same (seed, layer, head, block row). It is defined on blocks, so its token
    meaning depends on the block size: with blocks of 64, ``random(3)`` gives each query 3 runs of
    64 keys. ``r`` past the number of key blocks is every block.

    >>> cp = patternc.compile("random(2, seed=7)", n=256, block=64)
    >>> cp.layout(0, 0).indices.reshape(4, 2)
    array([[0, 3],
           [2, 3],
           [0, 1],
           [2, 3]], dtype=int32)
    """
    grid = scope.grid
    return RandomBlocks(min(r, grid.nbk), seed, scope.layer, scope.head, grid.bq, grid.bk, grid.n)

