"""``neighborhood``: windows over image and video tokens laid out row-major (neighbourhood attention).

Tokens ``0 .. prod(size) - 1`` are the cells of a grid of ``size`` (``[rows, cols]`` or ``[frames,
rows, cols]``, slowest axis first, the last axis contiguous), as a vision or video transformer
flattens its patches; tokens past the grid (text after the image) are not on it and this term
allows them nothing. A query attends the keys inside its window on every axis: ``kernel[a]``
cells, centred on the query and shifted inward at the borders so that every query sees the same
number, as NATTEN's neighbourhood attention defines it (start ``clamp(c - kernel // 2, 0, size -
kernel)`` on each axis; an even kernel reaches one cell further back than forward).

In the flattened order a window is ``kernel[0]`` (x ``kernel[1]``) runs of keys, one per row it
covers: the blocks are enumerated per query block from those runs, and counted exactly per query
in closed form (the keys of a box below an index, digit by digit), never pair by pair, once per
distinct block content (blocks away from the slowest axis' borders repeat every step of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from patternc.errors import PatternMeaningError
from patternc.lower.grid import expand_ranges
from patternc.lower.node import Lowered, kinds_from_counts, pair_counts
from patternc.primitives.registry import Arg, primitive

__all__ = ["Neighborhood", "neighborhood"]

QUERY_BUDGET = 1 << 22  # (block, query) pairs counted per batch by classify: bounds its memory


@dataclass(frozen=True, slots=True)
class Neighborhood(Lowered):
    """The window of ``kernel`` cells on a row-major grid of ``size`` (each kernel <= its size)."""

    size: tuple[int, ...]  # slowest axis first
    kernel: tuple[int, ...]

    @property
    def cells(self) -> int:
        return math.prod(self.size)

    def _axes(self):
        """(stride in tokens, size, kernel) per axis, slowest first."""
        strides = [math.prod(self.size[a + 1:]) for a in range(len(self.size))]
        return list(zip(strides, self.size, self.kernel, strict=True))

    def predicate(self, q, k):
        allowed = (q < self.cells) & (k < self.cells)
        for stride, size, kernel in self._axes():
            cq, ck, back = (q // stride) % size, (k // stride) % size, kernel // 2
            # start <= ck < start + kernel with start = clamp(cq - back, 0, size - kernel), without
            # min/max so that the same code runs on numpy arrays and torch tensors
            after_start = (ck >= cq - back) | (ck >= size - kernel)
            before_end = (ck < kernel) | (ck < cq - back + kernel)
            allowed = allowed & after_start & before_end
        return allowed

    def _starts(self, coordinate: np.ndarray, size: int, kernel: int) -> np.ndarray:
        return np.clip(coordinate - kernel // 2, 0, size - kernel)

    def _keys_below(self, q: np.ndarray, x: np.ndarray) -> np.ndarray:
        """How many keys of query ``q``'s window have an index below ``x`` (arrays alike): the box's
        cells below ``x`` digit by digit, slowest axis first, stopping where ``x`` leaves the box."""
        x = np.minimum(x, self.cells)
        count = np.zeros(np.broadcast(q, x).shape, np.int64)
        inside = np.ones(count.shape, bool)
        below = math.prod(self.kernel)  # cells of the box per step of the current axis
        for a, (stride, size, kernel) in enumerate(self._axes()):
            below //= kernel
            start = self._starts((q // stride) % size, size, kernel)
            digit = x // stride if a == 0 else (x // stride) % size
            count += np.where(inside, np.clip(digit - start, 0, kernel) * below, 0)
            inside &= (digit >= start) & (digit < start + kernel)
        return count

    def classify(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        return kinds_from_counts(pair_counts(self, grid, i, j), (q1 - q0) * (k1 - k0))

    def exact_counts(self, grid, i, j):
        """Per block, the sum over its queries of their window's keys in the block's key range."""
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        counts = np.zeros(len(i), np.int64)
        rows = max(1, QUERY_BUDGET // grid.bq)
        for s in range(0, len(i), rows):
            q = q0[s:s + rows, None] + np.arange(grid.bq)  # (m, bq): the block's queries
            on_grid = (q < q1[s:s + rows, None]) & (q < self.cells)
            q = np.minimum(q, self.cells - 1)
            per_query = self._keys_below(q, k1[s:s + rows, None]) - self._keys_below(q, k0[s:s + rows, None])
            counts[s:s + rows] = np.where(on_grid, per_query, 0).sum(axis=1)
        return counts

    def _coordinate_ranges(self, q0: np.ndarray, q_last: np.ndarray, stride: int, size: int):
        """Per block row, the lowest and highest coordinate its queries take on one axis (the
        whole axis when they wrap around it)."""
        u0, u1 = q0 // stride, q_last // stride
        c0, c1 = u0 % size, u1 % size
        whole = (u1 - u0 >= size - 1) | (c0 > c1)
        return np.where(whole, 0, c0), np.where(whole, size - 1, c1)

    def candidates(self, grid):
        rows = np.arange(grid.nbq, dtype=np.int64)
        q0, q1 = grid.q_bounds(rows)
        on_grid = q0 < self.cells
        rows, q0, q_last = rows[on_grid], q0[on_grid], np.minimum(q1[on_grid], self.cells) - 1
        # per axis, the key coordinates any query of the block row may read: [first, last]
        spans = []
        for stride, size, kernel in self._axes():
            lo, hi = self._coordinate_ranges(q0, q_last, stride, size)
            first, last = self._starts(lo, size, kernel), self._starts(hi, size, kernel) + kernel - 1
            spans.append((first, last, stride))
        # the runs of keys: every combination of the slower axes' coordinates, then the last axis'
        run_row = np.arange(len(rows))  # the block row (index into rows) each run of keys serves
        base = np.zeros(len(rows), np.int64)  # the run's first token, less its last-axis coordinate
        for first, last, stride in spans[:-1]:
            run, coordinate = expand_ranges(np.arange(len(run_row)), first[run_row], last[run_row])
            run_row, base = run_row[run], base[run] + coordinate * stride
        first, last, _ = spans[-1]
        run, cols = expand_ranges(np.arange(len(run_row)), (base + first[run_row]) // grid.bk,
                                  (base + last[run_row]) // grid.bk)
        keys = np.unique(rows[run_row[run]] * grid.nbk + cols)  # runs of one row may share blocks
        return keys // grid.nbk, keys % grid.nbk

    def block_key(self, grid, i, j):
        # Shifting a block's queries and keys by one step of the slowest axis keeps its content
        # when no query of it meets that axis' border (its window slides with it) and all are on
        # the grid: such blocks are keyed by (q0 - k0, q0 mod that step); every other block by its
        # own position.
        stride, size, kernel = self._axes()[0]
        q0, q1 = grid.q_bounds(i)
        k0, _ = grid.k_bounds(j)
        lo, hi = self._coordinate_ranges(q0, np.minimum(q1, self.cells) - 1, stride, size)
        back = kernel // 2
        interior = (q1 <= self.cells) & (lo >= back) & (hi <= size - kernel + back)
        return (np.where(interior, 0, 1), np.where(interior, q0 - k0, i), np.where(interior, q0 % stride, j))

    def lookback(self, n):
        # the farthest key back: kernel - 1 cells before the query on every axis (at a border)
        return min(n - 1, sum((kernel - 1) * stride for stride, _, kernel in self._axes()))

    def describe(self, n):
        return f"neighborhood({list(self.size)}, {list(self.kernel)})"

    def size_hint(self, grid):
        per_row = 1.0
        for stride, size, kernel in self._axes()[:-1]:
            per_row *= min(size, kernel + grid.bq // stride + 1)
        last = self.kernel[-1] + min(grid.bq, self.size[-1])
        return float(min(grid.nbq, -(-self.cells // grid.bq)) * per_row * min(grid.nbk, last / grid.bk + 2))


@primitive(Arg("size", "counts", doc="the grid, slowest axis first: [rows, cols] or [frames, rows, cols]"),
           Arg("kernel", "counts", doc="the window's cells per axis, in the same order"),
           allows="q and k on the grid, k inside q's window on every axis",
           source="neighbourhood attention (NATTEN), 2-D and 3-D windows of vision and video models",
           group="grids")
def neighborhood(scope, size: tuple[int, ...], kernel: tuple[int, ...]) -> Lowered:
    """A window of ``kernel`` cells per axis around each query on a row-major grid of ``size``
    (1 to 3 axes) flattened into the first ``prod(size)`` tokens; shifted inward at the borders, so
    every query on the grid sees ``prod(kernel)`` keys. A kernel past its axis is the whole axis.

    >>> cp = patternc.compile("neighborhood([4, 4], [3, 3])", n=16)
    >>> cp.to_dense(0, 0)[5].reshape(4, 4).astype(int)  # the query at row 1, column 1
    array([[1, 1, 1, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 0],
           [0, 0, 0, 0]])
    >>> cp.to_dense(0, 0)[0].reshape(4, 4).astype(int)  # a corner's window is shifted inward
    array([[1, 1, 1, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    if not 1 <= len(size) <= 3 or len(kernel) != len(size):
        raise PatternMeaningError(f"neighborhood(size, kernel) takes 1 to 3 axes and one kernel per axis, "
                                  f"got size {list(size)} and kernel {list(kernel)}")
    cells = math.prod(size)
    if cells > scope.grid.n:
        raise PatternMeaningError(f"neighborhood's grid {' x '.join(map(str, size))} holds {cells:,} tokens, "
                                  f"more than n = {scope.grid.n:,}")
    return Neighborhood(tuple(size), tuple(min(k, s) for k, s in zip(kernel, size, strict=True)))
