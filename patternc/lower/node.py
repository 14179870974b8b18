"""The lowered form of a pattern: bound values that know their blocks.

After binding (``n``, layer, head and parameters known), every pattern becomes a tree of
``Lowered`` nodes: the primitives' nodes (``patternc.primitives``) combined by set algebra
(``patternc.lower.algebra``). Each node answers four questions about the block grid, all vectorised:

- ``candidates(grid)``: a superset of its non-empty blocks, in time proportional to their number;
- ``classify(grid, i, j)``: the exact kind (EMPTY, PARTIAL, FULL) of arbitrary blocks ``(i, j)``;
- ``predicate(q, k)``: the token predicate, on numpy arrays or torch tensors alike;
- ``block_key(grid, i, j)``: integers such that two blocks with equal keys (and equal shape) hold
  the same pattern of allowed pairs.

``enumerate`` = candidates, classified, empties dropped. Composites that cannot decide a block from
its children's kinds (a PARTIAL | PARTIAL may be FULL) settle it by counting allowed pairs with
``pair_counts``, which evaluates each distinct block content once (``block_key``): a window's
edge blocks all look alike, so resolving thousands of them costs one evaluation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from patternc.lower.grid import KIND, Blocks, Grid

__all__ = ["BLOCK_BYTES", "CLASSIFY_BYTES", "ENUMERATE_BYTES", "EVALUATION_BYTES", "PAIR_BUDGET", "Lowered",
           "block_masks", "distinct_blocks", "kinds_from_counts", "lowering_bytes", "pair_counts", "resolve",
           "resolve_bytes", "stored_masks"]

PAIR_BUDGET = 1 << 22  # token pairs evaluated per batch when counting: bounds memory to ~100 MB

# What lowering holds per block, so that a compile's size limit is checked on bytes before any block
# is built. Measured with tracemalloc on every primitive and on unions, intersections, differences and
# complements of them; tests/test_lowering_memory.py keeps each estimate at or above the measured peak.
BLOCK_BYTES = 17  # a ``Blocks`` entry: int64 row and column, int8 kind
ENUMERATE_BYTES = 112  # a primitive's enumeration per candidate: ranges expanded, bounds, kinds, copies
CLASSIFY_BYTES = 96  # a primitive's classify per block: query and key bounds, offsets, counts
MERGE_BYTES = 56  # a union's merge per block of its parts: keys, their sort order, sorted copies
RESOLVE_BYTES = 144  # counting the pairs of an undecided block: bounds, shapes, a unique's sort...
KEY_BYTES = 16  # ... and each term's int64 content key column
EVALUATION_BYTES = 24 * PAIR_BUDGET  # one batch of token pairs evaluated: int64 offsets, masks


class Lowered(ABC):
    """Base of lowered pattern nodes (frozen dataclasses, so equal nodes share compiled blocks)."""

    __slots__ = ()

    @abstractmethod
    def candidates(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) sorted by row then col, no duplicates: every non-empty block, maybe more."""

    @abstractmethod
    def classify(self, grid: Grid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Exact kinds (int8) of blocks ``(i, j)``."""

    @abstractmethod
    def predicate(self, q, k):
        """Boolean array: is ``(q, k)`` allowed? ``q`` and ``k`` broadcast (numpy or torch)."""

    @abstractmethod
    def block_key(self, grid: Grid, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, ...]:
        """Content key columns for blocks ``(i, j)`` (see module docstring)."""

    @abstractmethod
    def size_hint(self, grid: Grid) -> float:
        """About how many blocks ``candidates`` yields; intersections enumerate the smaller side."""

    def partial_hint(self, grid: Grid) -> float:
        """At least how many of its blocks may be PARTIAL (an upper bound): a block two operands both
        hold partially is settled by counting pairs, which costs memory per block."""
        return self.size_hint(grid)

    def enumerate_bytes(self, grid: Grid) -> float:
        """About the most bytes ``enumerate`` holds at once, known before it runs: a primitive holds a
        few arrays per candidate block; combinators add up what their operands hold together."""
        return self.size_hint(grid) * ENUMERATE_BYTES

    def classify_bytes(self, grid: Grid, m: float) -> float:
        """About the most bytes ``classify`` holds at once on ``m`` blocks."""
        return m * CLASSIFY_BYTES

    def terms(self) -> int:
        """Primitives in the tree: each adds a content key column when blocks are counted."""
        return 1

    def exact_counts(self, grid: Grid, i: np.ndarray, j: np.ndarray) -> np.ndarray | None:
        """Allowed pairs in each block ``(i, j)`` in closed form, when the node has one; None: they
        are counted by evaluating the predicate (``pair_counts``)."""
        return None

    def lookback(self, n: int) -> int:
        """The largest ``q - k`` the node allows at length ``n`` (-1 when it allows no ``k <= q``):
        how long after a key is written a query may still read it, which bounds a decoder's KV cache.
        ``n - 1`` means to the end of the sequence, whatever its length. The default, ``n - 1``, is
        the safe answer for a node that does not say."""
        return n - 1

    def forever(self, n: int) -> tuple[str, ...]:
        """The terms that keep keys readable to the end of the sequence (``lookback == n - 1``),
        described as written: ``('stride(128)',)`` for ``causal & (window(256) | stride(128))``."""
        return (self.describe(n),) if self.lookback(n) >= n - 1 else ()

    def describe(self, n: int) -> str:
        """The node as a user would write it at length ``n``, for reports."""
        return repr(self)

    def progression(self, n: int) -> tuple[int, int, int] | None:
        """``(step, m_lo, m_hi)`` when the node allows exactly the offsets ``q - k = step * m`` for
        ``m_lo <= m <= m_hi`` (bands, dilations, strides, their intersections with a band), else
        None: the exact reachability run slides ORs along these instead of visiting pairs."""
        return None

    def enumerate(self, grid: Grid) -> Blocks:
        """Non-empty blocks with exact kinds, sorted by (row, col)."""
        rows, cols = self.candidates(grid)
        return Blocks(rows, cols, self.classify(grid, rows, cols)).nonempty()


def resolve_bytes(node: Lowered, m: float) -> float:
    """About the most bytes ``resolve`` holds on ``m`` blocks. Which blocks are undecided is known only
    once they are classified, so callers pass every block that may be."""
    return m * (RESOLVE_BYTES + KEY_BYTES * node.terms()) + (EVALUATION_BYTES if m else 0)


def lowering_bytes(node: Lowered, grid: Grid) -> float:
    """About the peak bytes of lowering ``node`` to a ``Layout``: its enumeration, or the blocks held
    while their CSR (int32 indptr and columns, bool kinds) is built, whichever is more.

    >>> from patternc.primitives.offsets import Band
    >>> round(lowering_bytes(Band(0, 2**20 - 1), Grid(2**20, 128, 128)) / 2**30, 2)  # causal at 1M: GiB
    3.51
    """
    # per block row: the row counts (int64), their running sum, the int32 indptr
    return max(node.enumerate_bytes(grid), (BLOCK_BYTES + 5) * node.size_hint(grid) + 24 * grid.nbq)


def kinds_from_counts(count: np.ndarray, length: np.ndarray) -> np.ndarray:
    """EMPTY where nothing of ``length`` is allowed, FULL where all of it is, PARTIAL between."""
    return ((count > 0).astype(KIND) + (count == length)).astype(KIND)


def distinct_blocks(node: Lowered, grid: Grid, i: np.ndarray, j: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Group blocks by content: ``(first, inverse)`` such that block ``m`` holds the same allowed
    pairs as block ``first[inverse[m]]`` (by ``block_key`` and the block's shape)."""
    q0, q1 = grid.q_bounds(i)
    k0, k1 = grid.k_bounds(j)
    columns = [np.asarray(c, np.int64) for c in (*node.block_key(grid, i, j), q1 - q0, k1 - k0)]
    # Fold the key columns into one integer when their ranges allow it (a 1-D unique is far
    # faster than a unique over rows); fall back to rows otherwise.
    ids = np.zeros(len(i), np.int64)
    scale = 1
    for column in columns:
        low = int(column.min())
        span = int(column.max()) - low + 1
        if scale * span >= 1 << 62:
            key = np.stack(columns, axis=1)
            _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
            return first, inverse.reshape(-1)
        ids += (column - low) * scale
        scale *= span
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def pair_counts(node: Lowered, grid: Grid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact number of allowed pairs in each block ``(i, j)`` (int64)."""
    if len(i) == 0:
        return np.zeros(0, np.int64)
    first, inverse = distinct_blocks(node, grid, i, j)
    counts = node.exact_counts(grid, i[first], j[first])
    if counts is None:
        counts = _count_by_evaluation(node, grid, i[first], j[first])
    return counts[inverse]


def block_masks(node: Lowered, grid: Grid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(m, bq, bk) bool: the allowed pairs of each block, False past the end of the sequence.

    Memory is m * bq * bk: callers pass distinct blocks (``distinct_blocks``) or batches.
    """
    q0, q1 = grid.q_bounds(i)
    k0, k1 = grid.k_bounds(j)
    q = q0[:, None, None] + np.arange(grid.bq)[None, :, None]
    k = k0[:, None, None] + np.arange(grid.bk)[None, None, :]
    q_top, k_top = q1[:, None, None] - 1, k1[:, None, None] - 1
    return node.predicate(np.minimum(q, q_top), np.minimum(k, k_top)) & (q <= q_top) & (k <= k_top)


def stored_masks(node: Lowered, layout) -> np.ndarray:
    """(nnz, bq, bk) bool: the allowed pairs of every block a ``Layout`` of ``node`` stores, False
    past the end of the sequence. FULL blocks need no evaluation; PARTIAL ones are evaluated in
    batches of ``PAIR_BUDGET`` pairs. Memory is nnz * bq * bk: callers bound it.

    >>> from patternc.primitives.offsets import Band
    >>> from patternc.layout import Layout
    >>> grid = Grid(3, 2, 2)
    >>> stored_masks(Band(0, 2), Layout.from_blocks(Band(0, 2).enumerate(grid), grid)).astype(int)
    array([[[1, 0],
            [1, 1]],
    <BLANKLINE>
           [[1, 1],
            [0, 0]],
    <BLANKLINE>
           [[1, 0],
            [0, 0]]])
    """
    grid = layout.grid
    rows, cols = layout.rows(), layout.indices.astype(np.int64)
    q0, q1 = grid.q_bounds(rows)
    k0, k1 = grid.k_bounds(cols)
    inside_q = np.arange(grid.bq)[None, :, None] < (q1 - q0)[:, None, None]  # (nnz, bq, 1)
    inside_k = np.arange(grid.bk)[None, None, :] < (k1 - k0)[:, None, None]  # (nnz, 1, bk)
    masks = inside_q & inside_k  # (nnz, bq, bk): all of a FULL block inside the sequence
    partial = np.flatnonzero(~layout.full)
    batch = max(1, PAIR_BUDGET // (grid.bq * grid.bk))
    for start in range(0, len(partial), batch):
        chosen = partial[start: start + batch]
        masks[chosen] = block_masks(node, grid, rows[chosen], cols[chosen])
    return masks


def _count_by_evaluation(node: Lowered, grid: Grid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Count allowed pairs block by block, evaluating the predicate in bounded batches."""
    batch = max(1, PAIR_BUDGET // (grid.bq * grid.bk))
    counts = np.empty(len(i), np.int64)
    for s in range(0, len(i), batch):
        counts[s : s + batch] = np.count_nonzero(block_masks(node, grid, i[s : s + batch], j[s : s + batch]),
                                                 axis=(1, 2))
    return counts


def resolve(node: Lowered, grid: Grid, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact kinds of blocks whose kind the children could not decide."""
    q0, q1 = grid.q_bounds(i)
    k0, k1 = grid.k_bounds(j)
    return kinds_from_counts(pair_counts(node, grid, i, j), (q1 - q0) * (k1 - k0))
