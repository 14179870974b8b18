"""Rows with no key: softmax is undefined there, whatever the stack's reach. (Pairs that look into
the future are found by ``patternc.layout.future_pair``, which causality inference shares.)"""

from __future__ import annotations

import numpy as np

from patternc.layout import Layout
from patternc.lower.node import Lowered, block_masks, distinct_blocks

__all__ = ["empty_rows"]


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
