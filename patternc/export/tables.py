"""The block lists of one layer as count and index tables, as wide as the widest row.

FlexAttention's ``BlockMask`` and FlashAttention 4's block sparsity take, per head and per query
block, the count of its key blocks of one kind (PARTIAL: the kernel applies the ``mask_mod``; FULL:
it does not) and their indices in increasing order, padded to a common width: ``num (rows,)`` and
``idx (rows, width)`` int32. The backward reads the transpose, per key block its query blocks.

Here ``width`` is the widest row's count (at least 1), so the tables hold about as many integers
as the layout stores blocks, where ``create_block_mask`` makes every row ``nbk`` wide. Heads whose
bound pattern is the same share one table (``heads`` maps each head to it); nothing evaluates a
token: the lists come straight from the compiled layouts.

>>> lists = layer_lists(patternc.compile("causal & window(300)", n=1024, block=128), 0)
>>> lists.partial_kv.idx.shape, lists.full_kv.idx.shape, lists.heads
((1, 8, 3), (1, 8, 1), array([0]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.limits import MAX_INDEX_BYTES, require

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.layout import Layout
    from patternc.lower.node import Lowered

__all__ = ["BlockLists", "LayerLists", "layer_lists"]


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class BlockLists:
    """One kind of block in one direction, for each distinct layout ``u`` of a layer:
    ``num[u, r]`` blocks listed in ``idx[u, r, :num[u, r]]`` (ascending; zeros past the count)."""

    num: np.ndarray  # (U, rows) int32
    idx: np.ndarray  # (U, rows, width) int32

    @property
    def width(self) -> int:
        return self.idx.shape[-1]


@dataclass(frozen=True, slots=True, eq=False)
class LayerLists:
    """The block lists of every head of one layer; ``heads[h]`` is head h's distinct layout."""

    heads: np.ndarray  # (H,) int64
    partial_kv: BlockLists  # per query block, its PARTIAL key blocks: (U, nbq), (U, nbq, w)
    full_kv: BlockLists  # per query block, its FULL key blocks
    partial_q: BlockLists | None  # per key block, its PARTIAL query blocks (the backward's); None if
    full_q: BlockLists | None  # not asked for


def layer_lists(cp: CompiledPattern, layer: int, transposed: bool = True) -> LayerLists:
    """The lists of every head of ``layer``; with ``transposed``, the query-side ones too. Their
    bytes are checked against ``MAX_INDEX_BYTES`` before anything is allocated."""
    cp.node(layer, 0)  # refuses a layer outside the stack before any work
    grid = cp.grid
    distinct: dict[Lowered, int] = {}
    layouts: list[Layout] = []
    heads = np.empty(cp.heads, np.int64)
    for h in range(cp.heads):
        node = cp.node(layer, h)
        if node not in distinct:
            distinct[node] = len(layouts)
            layouts.append(cp.layout(layer, h))
        heads[h] = distinct[node]
    # (owner, member) pairs per distinct layout, sorted by owner then member: CSR rows, or columns
    by_row = [_pairs(layout, full, by_column=False) for full in (False, True) for layout in layouts]
    by_col = [_pairs(layout, full, by_column=True) for full in (False, True) for layout in layouts] \
        if transposed else []
    shapes = [(grid.nbq, _widest(by_row[:len(layouts)], grid.nbq)),
              (grid.nbq, _widest(by_row[len(layouts):], grid.nbq))]
    if transposed:
        shapes += [(grid.nbk, _widest(by_col[:len(layouts)], grid.nbk)),
                   (grid.nbk, _widest(by_col[len(layouts):], grid.nbk))]
    size = 4 * len(layouts) * sum(rows * (width + 1) for rows, width in shapes)
    backward = ", or backward=False (leaves out the query-side tables)" if transposed else ""
    require(size, MAX_INDEX_BYTES, f"bytes of block tables for layer {layer} ({cp.heads} heads, "
            f"{len(layouts)} distinct layouts)", f"use a larger block{backward}")
    tables = [_lists(chunk, rows, width)
              for chunk, (rows, width) in zip(_chunks(by_row + by_col, len(layouts)), shapes, strict=True)]
    return LayerLists(heads, tables[0], tables[1], *(tables[2:] if transposed else (None, None)))


def _pairs(layout: Layout, full: bool, by_column: bool) -> tuple[np.ndarray, np.ndarray]:
    chosen = layout.full if full else ~layout.full
    rows, cols = layout.rows()[chosen], layout.indices[chosen].astype(np.int64)
    if not by_column:
        return rows, cols
    order = np.argsort(cols, kind="stable")  # stable: rows stay ascending within each column
    return cols[order], rows[order]


def _widest(pairs: list[tuple[np.ndarray, np.ndarray]], rows: int) -> int:
    """The largest count of any owner (at least 1: a zero-width table has no entry to pad with)."""
    return max([1, *(int(np.bincount(owner, minlength=rows).max(initial=0)) for owner, _ in pairs)])


def _chunks(items: list, size: int) -> list[list]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def _lists(pairs: list[tuple[np.ndarray, np.ndarray]], rows: int, width: int) -> BlockLists:
    num = np.zeros((len(pairs), rows), np.int32)
    idx = np.zeros((len(pairs), rows, width), np.int32)
    for u, (owner, member) in enumerate(pairs):
        num[u] = np.bincount(owner, minlength=rows)
        start = np.cumsum(num[u], dtype=np.int64) - num[u]  # first slot of each owner's run
        idx[u, owner, np.arange(len(owner)) - start[owner]] = member
    return BlockLists(num, idx)
