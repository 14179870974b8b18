"""Primitives that depend only on the offset ``d = q - k``: causal, window, band, dilated, stride,
diagonals. Each is an entry (``@primitive``) over one of four offset sets below.

Within a block the offsets form one contiguous interval ``[q0 - (k1 - 1), (q1 - 1) - k0]`` and every
offset in it occurs, so a block's kind follows from how many allowed offsets the interval holds:
none (EMPTY), all (FULL) or some (PARTIAL). Each primitive therefore gives ``count(dmin, dmax)``,
and a list of offset intervals to enumerate from; nothing looks at individual pairs.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from patternc.errors import PatternMeaningError
from patternc.lower.grid import Grid, expand_ranges, lookup
from patternc.lower.node import Lowered, kinds_from_counts
from patternc.primitives.registry import Arg, primitive

__all__ = ["Band", "Diagonals", "Dilated", "Stride", "band", "causal", "diagonals", "dilated", "stride",
           "window"]


class _OffsetSet(Lowered):
    """A set of allowed offsets ``q - k``; subclasses give ``count`` and ``intervals``."""

    __slots__ = ()

    @abstractmethod
    def count(self, dmin: np.ndarray, dmax: np.ndarray) -> np.ndarray:
        """Number of allowed offsets in each inclusive interval ``[dmin, dmax]``."""

    @abstractmethod
    def intervals(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive offset intervals covering the allowed set, gaps narrower than a block merged."""

    def hull(self, grid: Grid) -> tuple[int, int]:
        a, b = self.intervals(grid)
        return (int(a[0]), int(b[-1])) if len(a) else (0, -1)

    def classify(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        dmin, dmax = q0 - (k1 - 1), (q1 - 1) - k0
        return kinds_from_counts(self.count(dmin, dmax), dmax - dmin + 1)

    def candidates(self, grid):
        n, bk = grid.n, grid.bk
        a, b = self.intervals(grid)
        rows = np.arange(grid.nbq, dtype=np.int64)
        q0, q1 = grid.q_bounds(rows)
        # Block row i reaches offsets in [q0 - (n - 1), q1 - 1]: a contiguous run of intervals.
        first = np.searchsorted(b, q0 - (n - 1), "left")
        last = np.searchsorted(a, q1 - 1, "right") - 1
        row, ascending = expand_ranges(rows, first, last)
        # Larger offsets reach smaller keys: walk the run backwards so columns come out ascending.
        iv = np.repeat(first + last, np.maximum(last - first + 1, 0)) - ascending
        q0, q1 = q0[row], q1[row]
        col_lo = np.maximum(q0 - b[iv], 0) // bk
        col_hi = np.minimum(q1 - 1 - a[iv], n - 1) // bk
        owner, cols = expand_ranges(np.arange(len(row)), col_lo, col_hi)
        # Intervals are at least bq + bk - 1 apart (see _merge_points), so within one block row
        # their key ranges lie more than a block apart: no block is produced twice.
        return row[owner], cols

    def size_hint(self, grid):
        a, b = self.intervals(grid)
        rows = (np.minimum(grid.n - 1, grid.n - 1 + b) - np.maximum(a, 0)) / grid.bq + 1
        per_row = (b - a + grid.bq - 1) // grid.bk + 2  # b - a + bq keys in a row: at most this many blocks
        # A wide band is a triangle, not a parallelogram (causal: nb^2 / 2 blocks, not nb^2): its
        # pairs fill that many blocks, plus the blocks its two edges and the short last row and
        # column cross. The smaller bound holds for each interval.
        area = (_pairs_below(b, grid.n) - _pairs_below(a - 1, grid.n)) / (grid.bq * grid.bk) \
            + 3 * (grid.nbq + grid.nbk)
        return float(np.sum(np.minimum(np.maximum(rows, 0) * np.minimum(per_row, grid.nbk), area)))

    def block_key(self, grid, i, j):
        # Blocks wholly outside the hull all hold nothing; inside, the content is fixed by q0 - k0.
        lo, hi = self.hull(grid)
        q0, _ = grid.q_bounds(i)
        k0, _ = grid.k_bounds(j)
        return (np.clip(q0 - k0, lo - grid.bq - grid.bk, hi + grid.bq + grid.bk),)


def _pairs_below(d: np.ndarray, n: int) -> np.ndarray:
    """How many pairs of ``[0, n)^2`` have ``q - k <= d`` (float64: n^2 may pass 2**63).

    >>> _pairs_below(np.array([-4, -1, 0, 3]), 4)
    array([ 0.,  6., 10., 16.])
    """
    x = np.clip(np.asarray(d, np.float64), -n, n - 1)
    return np.where(x < 0, (n + x) * (n + x + 1) / 2, float(n) * n - (n - 1 - x) * (n - x) / 2)


def _lattice(step: int, m: int, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Intervals for the offsets ``step * t``, ``|t| <= m``: one interval when they are dense."""
    if step <= grid.bq + grid.bk - 1:
        return np.array([-m * step], np.int64), np.array([m * step], np.int64)
    return _merge_points(np.arange(-m, m + 1, dtype=np.int64) * step, grid)


def _merge_points(points: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Sorted offsets -> intervals, merging runs closer than a block's offset span.

    Any block's offsets span ``bq + bk - 1`` values, so offsets closer than that reach the same
    blocks anyway: merging them keeps the candidate set proportional to the output.
    """
    if len(points) == 0:
        z = np.zeros(0, np.int64)
        return z, z
    breaks = np.flatnonzero(np.diff(points) > grid.bq + grid.bk - 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(points) - 1]))
    return points[starts], points[ends]


@dataclass(frozen=True, slots=True)
class Band(_OffsetSet):
    """``lo <= q - k <= hi``; ``causal`` is ``Band(0, n - 1)``, ``window(w)`` is ``Band(1 - w, w - 1)``."""

    lo: int
    hi: int

    def progression(self, n):
        return 1, self.lo, self.hi

    def lookback(self, n):
        return min(self.hi, n - 1) if self.hi >= max(self.lo, 0) else -1

    def block_key(self, grid, i, j):
        # A block's content is fixed by d = q0 - k0, and is the same for every block whose
        # offsets lie wholly inside the band (all allowed) or wholly outside it (none): only
        # blocks crossing an edge need d. Without this, the causal band would give each of a
        # long sequence's diagonals its own key, and every union or intersection with it too.
        q0, _ = grid.q_bounds(i)
        k0, _ = grid.k_bounds(j)
        d = q0 - k0
        low, high = d - (grid.bk - 1), d + (grid.bq - 1)  # offsets of a whole block at d
        inside = (low >= self.lo) & (high <= self.hi)
        outside = (high < self.lo) | (low > self.hi)
        far = 2 * grid.n + grid.bq + grid.bk  # beyond any d
        return (np.where(inside, far, np.where(outside, far + 1, d)),)

    def partial_hint(self, grid):
        # only blocks its two edges cross: each edge is a line through at most nbq + nbk blocks
        return min(self.size_hint(grid), 2.0 * (grid.nbq + grid.nbk))

    def is_causal(self, n: int) -> bool:
        """Exactly the pairs ``k <= q`` at length ``n``: dense causal attention."""
        return self.lo == 0 and self.hi >= n - 1

    def describe(self, n):
        if self.is_causal(n):
            return "causal"
        return f"window({self.hi + 1})" if self.lo == -self.hi else f"band({self.lo}, {self.hi})"

    def count(self, dmin, dmax):
        return np.maximum(np.minimum(dmax, self.hi) - np.maximum(dmin, self.lo) + 1, 0)

    def intervals(self, grid):
        lo, hi = max(self.lo, 1 - grid.n), min(self.hi, grid.n - 1)
        if lo > hi:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.array([lo], np.int64), np.array([hi], np.int64)

    def predicate(self, q, k):
        d = q - k
        return (d >= self.lo) & (d <= self.hi)


@dataclass(frozen=True, slots=True)
class Stride(_OffsetSet):
    """``(q - k) % s == 0``."""

    s: int

    def progression(self, n):
        return self.s, -((n - 1) // self.s), (n - 1) // self.s

    def describe(self, n):
        return f"stride({self.s})"

    def count(self, dmin, dmax):
        return np.maximum(dmax // self.s - (dmin - 1) // self.s, 0)

    def intervals(self, grid):
        return _lattice(self.s, (grid.n - 1) // self.s, grid)

    def predicate(self, q, k):
        return (q - k) % self.s == 0

    def block_key(self, grid, i, j):
        q0, _ = grid.q_bounds(i)
        k0, _ = grid.k_bounds(j)
        return ((q0 - k0) % self.s,)  # the lines repeat every s offsets


@dataclass(frozen=True, slots=True)
class Dilated(_OffsetSet):
    """``(q - k) % d == 0`` and ``|q - k| < w * d``: every d-th offset, w of them each side."""

    w: int
    d: int

    @property
    def reach(self) -> int:
        return (self.w - 1) * self.d

    def progression(self, n):
        return self.d, 1 - self.w, self.w - 1

    def lookback(self, n):
        return min(self.w - 1, (n - 1) // self.d) * self.d

    def describe(self, n):
        return f"dilated({self.w}, {self.d})"

    def count(self, dmin, dmax):
        lo, hi = np.maximum(dmin, -self.reach), np.minimum(dmax, self.reach)
        return np.where(lo <= hi, hi // self.d - (lo - 1) // self.d, 0)

    def intervals(self, grid):
        return _lattice(self.d, min(self.w - 1, (grid.n - 1) // self.d), grid)

    def predicate(self, q, k):
        d = q - k
        return (d % self.d == 0) & (abs(d) <= self.reach)


@dataclass(frozen=True, slots=True)
class Diagonals(_OffsetSet):
    """``q - k`` in a set of offsets (MInference's slash lines), each with ``|o| < n``."""

    offsets: tuple[int, ...]  # sorted, unique
    n: int

    def count(self, dmin, dmax):
        points = _offset_array(self.offsets)
        return np.searchsorted(points, dmax, "right") - np.searchsorted(points, dmin, "left")

    def lookback(self, n):
        return max((o for o in self.offsets if o >= 0), default=-1)

    def describe(self, n):
        return f"diagonals({list(self.offsets)})"

    def intervals(self, grid):
        return _merge_points(_offset_array(self.offsets), grid)

    def predicate(self, q, k):
        return lookup(_offset_table(self.offsets, self.n), q - k + (self.n - 1))


@lru_cache(maxsize=64)
def _offset_array(offsets: tuple[int, ...]) -> np.ndarray:
    return np.array(offsets, np.int64)


@lru_cache(maxsize=64)
def _offset_table(offsets: tuple[int, ...], n: int) -> np.ndarray:
    table = np.zeros(2 * n - 1, bool)  # entry d + n - 1 says whether offset d is allowed
    table[_offset_array(offsets) + n - 1] = True
    return table


# ---- the entries ------------------------------------------------------------------------------------

_OFFSETS = dict(group="offsets")


@primitive(allows="k <= q", source="decoders", **_OFFSETS)
def causal(scope) -> Lowered:
    """Every key at or before the query: a decoder's attention.

    >>> patternc.compile("causal", n=4).to_dense(0, 0).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1]])
    """
    return Band(0, scope.grid.n - 1)


@primitive(Arg("w", doc="keys per side, the query included"), allows="abs(q - k) < w",
           source="Longformer, Mistral's sliding window", **_OFFSETS)
def window(scope, w: int) -> Lowered:
    """Keys less than ``w`` tokens away on either side, so ``causal & window(w)`` sees exactly ``w``
    keys: the query and the ``w - 1`` before it. A width past ``n`` is every pair.

    >>> patternc.compile("causal & window(3)", n=6).to_dense(0, 0).sum(axis=1)
    array([1, 2, 3, 3, 3, 3])
    """
    w = min(w, scope.grid.n)
    return Band(1 - w, w - 1)


@primitive(Arg("lo", "offset", doc="smallest q - k"), Arg("hi", "offset", doc="largest q - k"),
           allows="lo <= q - k <= hi", source="asymmetric windows", **_OFFSETS)
def band(scope, lo: int, hi: int) -> Lowered:
    """Offsets ``q - k`` from ``lo`` to ``hi``, both included: ``band(0, 3)`` is ``causal & window(4)``,
    ``band(-2, -1)`` the two keys after the query.

    >>> patternc.compile("band(1, 2)", n=5).to_dense(0, 0).astype(int)
    array([[0, 0, 0, 0, 0],
           [1, 0, 0, 0, 0],
           [1, 1, 0, 0, 0],
           [0, 1, 1, 0, 0],
           [0, 0, 1, 1, 0]])
    """
    if lo > hi:
        raise PatternMeaningError(f"band(lo, hi) needs lo <= hi, got lo = {lo} > hi = {hi}")
    n = scope.grid.n
    return Band(max(lo, 1 - n), min(hi, n - 1))


@primitive(Arg("w", doc="keys per side, the query included"), Arg("d", doc="dilation"),
           allows="(q - k) % d == 0 and abs(q - k) < w * d", source="Longformer's dilated heads", **_OFFSETS)
def dilated(scope, w: int, d: int) -> Lowered:
    """Every ``d``-th key, ``w`` of them on each side (the query included): a window of ``w`` with
    gaps of ``d - 1``.

    >>> patternc.compile("causal & dilated(3, 2)", n=6).to_dense(0, 0)[5].astype(int)
    array([0, 1, 0, 1, 0, 1])
    """
    n = scope.grid.n
    return Dilated(min(w, n), min(d, n))


@primitive(Arg("s", doc="period"), allows="(q - k) % s == 0", source="Sparse Transformer, strided heads",
           **_OFFSETS)
def stride(scope, s: int) -> Lowered:
    """Keys a multiple of ``s`` away, at any distance. At a block of 128, a stride shorter than 255
    touches every block: a block-sparse kernel pays for it in full.

    >>> patternc.compile("causal & stride(3)", n=7).to_dense(0, 0)[6].astype(int)
    array([1, 0, 0, 1, 0, 0, 1])
    """
    return Stride(min(s, scope.grid.n))


@primitive(Arg("offsets", "offsets", doc="the allowed values of q - k"), allows="q - k in the list",
           source="MInference's slash lines", **_OFFSETS)
def diagonals(scope, offsets: tuple[int, ...]) -> Lowered:
    """Whole diagonals: the offsets ``q - k`` in the list (each in ``(-n, n)``).

    >>> patternc.compile("diagonals([0, 2])", n=4).to_dense(0, 0).astype(int)
    array([[1, 0, 0, 0],
           [0, 1, 0, 0],
           [1, 0, 1, 0],
           [0, 1, 0, 1]])
    """
    return Diagonals(offsets, scope.grid.n)

