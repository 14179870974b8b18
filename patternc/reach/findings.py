"""Per-head findings that make a stack wrong whatever its reach: rows with no key (softmax is
undefined there) and, in a stack declared causal, pairs that look into the future."""

from __future__ import annotations

import numpy as np

from patternc.layout import Layout
from patternc.lower.algebra import Complement, Intersect
from patternc.lower.diffs import Band
from patternc.lower.grid import EMPTY
from patternc.lower.node import Lowered, block_masks, distinct_blocks

__all__ = ["empty_rows", "future_pair"]


def empty_rows(node: Lowered, layout: Layout) -> np.ndarray:
    """Query positions with no allowed key (sorted int64).

    A block row with a FULL block has no empty row. Elsewhere each distinct block content says
    which of its rows see a key (``block_masks``); the rows of a block row are then OR-ed across
    its blocks as packed bits.
    """
    grid = layout.grid
    rows, cols = layout.rows(), layout.indices.astype(np.int64)
    has_full = np.zeros(grid.nbq, bool)
    has_full[rows[layout.full]] = True
    covered = np.zeros((grid.nbq, grid.bq), bool)
    covered[has_full] = True
    suspect = ~has_full[rows]
    r, c = rows[suspect], cols[suspect]
    if len(r):
        first, inverse = distinct_blocks(node, grid, r, c)
        sees_key = np.packbits(block_masks(node, grid, r[first], c[first]).any(axis=2), axis=1)
        starts = np.flatnonzero(np.concatenate(([True], r[1:] != r[:-1])))
        per_row = np.bitwise_or.reduceat(sees_key[inverse], starts, axis=0)
        covered[r[starts]] |= np.unpackbits(per_row, axis=1, count=grid.bq).astype(bool)
    q = np.flatnonzero(~covered.reshape(-1))
    return q[q < grid.n]


def future_pair(node: Lowered, layout: Layout) -> tuple[int, int] | None:
    """Some allowed (q, k) with k > q, or None when the head is causal."""
    grid = layout.grid
    rows, cols = layout.rows(), layout.indices.astype(np.int64)
    q0, _ = grid.q_bounds(rows)
    _, k1 = grid.k_bounds(cols)
    reaching_future = k1 - 1 > q0
    future = Intersect(node, Complement(Band(0, grid.n)))
    i, j = rows[reaching_future], cols[reaching_future]
    kinds = future.classify(grid, i, j)
    hit = np.flatnonzero(kinds != EMPTY)
    if len(hit) == 0:
        return None
    bi, bj = int(i[hit[0]]), int(j[hit[0]])
    qs = np.arange(bi * grid.bq, min((bi + 1) * grid.bq, grid.n))[:, None]
    ks = np.arange(bj * grid.bk, min((bj + 1) * grid.bk, grid.n))[None, :]
    dq, dk = np.nonzero(np.broadcast_to(future.predicate(qs, ks), (len(qs), ks.shape[1])))
    return int(qs[dq[0], 0]), int(ks[0, dk[0]])
