"""The coarsest row and column partition of a layout in which every cell is all-allowed or
all-masked: FlashInfer's variable block-sparse input, for one KV head.

Start from the layout's block edges. A FULL or EMPTY block is uniform already; a PARTIAL block is
cut further where its rows change (two consecutive rows allow different keys) and where its
columns change. The cells of those cuts are uniform, since between two row cuts the rows are equal
and between two column cuts the columns are. Rows (columns) whose cells all agree with the
previous row's (column's) are merged back, when rows and columns are cut independently.

With ``causal``, a diagonal block (square blocks only) is cut where its *excluded* pairs change
(those at or below the diagonal that the pattern does not allow), rows and columns at the same
places, so that each diagonal cell is a square that is exactly causal; FlashInfer's ``causal=True``
then supplies the triangle. It aligns each block row's keys to its last query (``kv_idx <= q_idx +
kv_len - qo_len``), which is ``k <= q`` only when the row's last selected cell is its own diagonal
cell, so every row with a key must select its diagonal cell.

A PARTIAL block whose cuts leave most of its rows (or columns) as cells of one token is a
staircase (a window's diagonal edge, a band, a stride): whole cells express it only token by token,
so it is a ``PatternError`` naming the block. (A few token rows or columns are fine.)

>>> cp = patternc.compile("causal & chunk(96)", n=256, block=64)
>>> cuts = partition(cp.node(), cp.layout(), causal=True)
>>> cuts.rows.tolist(), cuts.causal
([0, 64, 96, 128, 192, 256], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import PatternMeaningError, PatternSizeError
from patternc.layout import is_causal
from patternc.limits import DENSE_LIMIT
from patternc.lower.node import PAIR_BUDGET, block_masks, distinct_blocks

if TYPE_CHECKING:
    from patternc.layout import Layout
    from patternc.lower.node import Lowered

__all__ = ["Partition", "PartitionError", "cell_map", "check_causal_rows", "equalize", "partition"]


class PartitionError(PatternMeaningError):
    """A layout that no partition coarser than single tokens expresses in whole cells."""


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class Partition:
    """Cell edges ``rows`` (MB + 1,) and ``cols`` (NB + 1,), from 0 to n; ``causal`` when the
    diagonal cells are squares left to FlashInfer's causal mask."""

    rows: np.ndarray
    cols: np.ndarray
    causal: bool


def partition(node: Lowered, layout: Layout, causal: bool, max_cells: int = DENSE_LIMIT) -> Partition:
    """The coarsest partition of ``layout`` (of ``node``) into uniform cells (module docstring);
    one of more than ``max_cells`` cells is refused before its cells are examined."""
    grid = layout.grid
    if causal and grid.bq != grid.bk:
        raise PartitionError(f"causal cells need square blocks, got {grid.bq} x {grid.bk}")
    if causal and not is_causal(node, layout):
        raise PartitionError("the pattern lets a query see a later key, which FlashInfer's causal=True "
                             "would mask")
    rows = {int(x) for x in np.arange(0, grid.n, grid.bq)} | {grid.n}
    cols = {int(x) for x in np.arange(0, grid.n, grid.bk)} | {grid.n}
    i, j = layout.rows(), layout.indices.astype(np.int64)
    partial = ~layout.full
    diagonal = partial & (i == j) if causal else np.zeros_like(partial)
    for chosen, on_diagonal in ((partial & ~diagonal, False), (diagonal, True)):
        found_rows, found_cols = _cuts(node, grid, i[chosen], j[chosen], on_diagonal)
        rows |= found_rows
        cols |= found_cols
    if causal:  # diagonal cells must stay squares: rows and columns share their cuts
        rows = cols = rows | cols
    rows, cols = np.array(sorted(rows)), np.array(sorted(cols))
    cells = (len(rows) - 1) * (len(cols) - 1)
    if cells > max_cells:
        raise PatternSizeError(f"a partition of {len(rows) - 1:,} x {len(cols) - 1:,} = {cells:,} cells "
                               f"exceeds the limit of {max_cells:,}; compile with a larger block or pass "
                               "max_cells")
    if not causal:
        rows, cols = _merged(node, layout, rows, cols)
    return Partition(rows, cols, causal)


def _cuts(node, grid, i, j, on_diagonal: bool) -> tuple[set[int], set[int]]:
    """Global row and column cuts inside blocks ``(i, j)``, each distinct content examined once."""
    if len(i) == 0:
        return set(), set()
    first, inverse = distinct_blocks(node, grid, i, j)
    inverse = inverse.reshape(-1)
    q0, q1 = grid.q_bounds(i)
    k0, k1 = grid.k_bounds(j)
    rows: set[int] = set()
    cols: set[int] = set()
    by_content = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[by_content], np.arange(len(first) + 1))  # blocks of content u
    batch = max(1, PAIR_BUDGET // (grid.bq * grid.bk))
    tril = np.tril(np.ones((grid.bq, grid.bk), bool))
    for s in range(0, len(first), batch):
        chosen = first[s: s + batch]
        masks = block_masks(node, grid, i[chosen], j[chosen])  # (m, bq, bk)
        if on_diagonal:  # what the causal triangle does not cover: excluded pairs at or below it
            masks = tril & ~masks
        row_change = (masks[:, 1:, :] != masks[:, :-1, :]).any(axis=2)  # (m, bq - 1)
        col_change = (masks[:, :, 1:] != masks[:, :, :-1]).any(axis=1)  # (m, bk - 1)
        for m, b in enumerate(chosen):
            h, w = int(q1[b] - q0[b]), int(k1[b] - k0[b])
            r = np.flatnonzero(row_change[m, : h - 1]) + 1
            c = np.flatnonzero(col_change[m, : w - 1]) + 1
            thin_rows, thin_cols = _thin(r, h), _thin(c, w)
            if thin_rows or thin_cols:
                raise PartitionError(
                    f"block ({i[b]}, {j[b]}) (queries {q0[b]}..{q1[b] - 1}, keys {k0[b]}..{k1[b] - 1}) "
                    f"changes at most of its {'rows' if thin_rows else 'columns'}, so only cells of single "
                    "tokens express it (a window's diagonal edge, a band, a stride)")
            members = by_content[starts[s + m]: starts[s + m + 1]]  # every block with this content
            rows.update((q0[members][:, None] + r[None, :]).reshape(-1).tolist())
            cols.update((k0[members][:, None] + c[None, :]).reshape(-1).tolist())
    return rows, cols


def _thin(cuts: np.ndarray, size: int) -> bool:
    """Whether ``cuts`` (inside a side of ``size`` tokens) leave more than half of it in cells of
    one token: a staircase, not a few token rows or columns. Sides under 4 tokens are let be."""
    if size < 4:
        return False
    edges = np.concatenate(([0], cuts, [size]))
    return int((np.diff(edges) == 1).sum()) * 2 > size


def cell_map(node: Lowered, layout: Layout, cuts: Partition) -> np.ndarray:
    """(MB, NB) bool: which cells are selected. A cell inside a FULL block is; inside an EMPTY one
    it is not; inside a PARTIAL one it is uniform (or, on the diagonal, exactly causal), so its
    first pair decides."""
    grid = layout.grid
    r0, c0 = cuts.rows[:-1], cuts.cols[:-1]
    kinds = layout.kind_of((r0 // grid.bq)[:, None], (c0 // grid.bk)[None, :])  # (MB, NB)
    selected = kinds == 2  # FULL
    partial = np.nonzero(kinds == 1)
    selected[partial] = node.predicate(r0[partial[0]], c0[partial[1]])
    return selected


def check_causal_rows(selected: np.ndarray, cuts: Partition) -> None:
    """FlashInfer's causal mask is bottom-right aligned per block row: every row with a selected
    cell must select its own diagonal cell, and nothing past it."""
    diagonal = np.diagonal(selected)
    any_key = selected.any(axis=1)
    beyond = np.triu(selected, 1).any(axis=1)
    bad = np.flatnonzero((any_key & ~diagonal) | beyond)
    if len(bad):
        a = int(bad[0])
        raise PartitionError(
            f"queries {cuts.rows[a]}..{cuts.rows[a + 1] - 1} attend keys but not their own diagonal cell; "
            "FlashInfer's causal=True aligns each block row's keys to its last query, which is k <= q "
            "only when the row ends on its diagonal")


def _merged(node, layout, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop row (column) cuts between two rows (columns) of cells that agree everywhere."""
    selected = cell_map(node, layout, Partition(rows, cols, False))
    keep_rows = np.concatenate(([True], (selected[1:] != selected[:-1]).any(axis=1), [True]))
    rows = rows[keep_rows]
    selected = cell_map(node, layout, Partition(rows, cols, False))
    keep_cols = np.concatenate(([True], (selected[:, 1:] != selected[:, :-1]).any(axis=0), [True]))
    return rows, cols[keep_cols]


def equalize(edges: np.ndarray, count: int) -> np.ndarray:
    """``edges`` cut further, halving the widest cells, until there are ``count`` cells (FlashInfer
    takes the same number of cells for every KV head; a cut inside a uniform cell keeps it so)."""
    edges = np.asarray(edges)
    while len(edges) - 1 < count:
        sizes = np.diff(edges)
        wanted = min(count - (len(edges) - 1), int((sizes > 1).sum()))
        widest = np.argsort(-sizes, kind="stable")[:wanted]
        edges = np.union1d(edges, edges[widest] + sizes[widest] // 2)
    return edges
