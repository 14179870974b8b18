"""Per key column, the query rows a pattern allows, as runs of consecutive rows.

FlashMask describes a mask column by column, by the row intervals it masks, so its export needs,
for every key ``k``, the runs ``[start, end)`` of rows ``q`` that allow ``(q, k)``. They come from
the compiled layout without any ``n x n`` grid: each distinct block content is evaluated once
(``distinct_blocks``) and summarised per column of the block (its runs, where they start and end,
whether they touch the block's top and bottom rows); a column's runs are then its blocks' runs,
joined where one block's run reaches its bottom row and the next block's starts at its top.

A column is counted first (runs per block, less the joins), so a pattern with too many runs
(a stride, random blocks) is found before any run is listed; only up to ``max_runs`` runs are kept.

>>> cp = patternc.compile("causal & window(3)", n=6, block=4)
>>> runs = column_runs(cp.node(), cp.layout())
>>> runs.count.tolist(), runs.start[:, 0].tolist(), runs.end[:, 0].tolist()
([1, 1, 1, 1, 1, 1], [0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 6, 6])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.lower.node import PAIR_BUDGET, block_masks, distinct_blocks

if TYPE_CHECKING:
    from patternc.layout import Layout
    from patternc.lower.node import Lowered

__all__ = ["ColumnRuns", "column_runs"]

MAX_RUNS = 3  # FlashMask's widest form masks two row intervals per column: at most three runs remain
DENSE_GROUPS = 1 << 24  # combinations counted with one bincount; more are sorted


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class ColumnRuns:
    """``count[k]`` runs of allowed rows in key column ``k``; when every count is at most
    ``max_runs``, run ``r`` is ``[start[k, r], end[k, r])`` (ascending; 0 past the count).
    Otherwise ``over`` is a column with more runs, ``count[over]`` its count, and ``start``/``end``
    are None (counting stops at the first batch of columns that holds one)."""

    count: np.ndarray  # (n,) int64
    start: np.ndarray | None  # (n, max_runs) int64
    end: np.ndarray | None
    over: int | None  # a key column with more than max_runs runs

    def runs(self, k: int) -> list[tuple[int, int]]:
        """The runs of column ``k``, as a list (only when they were listed)."""
        return [(int(self.start[k, r]), int(self.end[k, r])) for r in range(int(self.count[k]))]


@dataclass(frozen=True, slots=True, eq=False)
class _Summary:
    """Per distinct block content ``u`` and local column ``c``: its number of runs, whether the
    first and last rows are allowed, and where its first ``max_runs`` runs start and end."""

    runs: np.ndarray  # (U, bk) int64
    top: np.ndarray  # (U, bk) bool
    bottom: np.ndarray  # (U, bk) bool
    start: np.ndarray  # (U, bk, R) int64, local rows
    end: np.ndarray  # (U, bk, R) int64


def column_runs(node: Lowered, layout: Layout, max_runs: int = MAX_RUNS) -> ColumnRuns:
    """The runs of allowed rows of every key column of ``layout`` (the layout of ``node``)."""
    grid = layout.grid
    order = np.lexsort((layout.rows(), layout.indices))  # by column, then row
    i, j = layout.rows()[order], layout.indices.astype(np.int64)[order]
    content, summary = _contents(node, layout, order, max_runs)
    prev = np.zeros(len(j), bool)  # the block above is stored
    prev[1:] = (j[1:] == j[:-1]) & (i[1:] == i[:-1] + 1)
    count, over = _counts(grid, j, content, prev, summary, max_runs)
    if over is not None:
        return ColumnRuns(count, None, None, over)
    start, end = _list_runs(grid, i, j, content, prev, summary, max_runs)
    return ColumnRuns(count, start, end, None)


def _contents(node: Lowered, layout: Layout, order: np.ndarray, max_runs: int) -> tuple[np.ndarray, _Summary]:
    """Each block's content index (blocks in ``order``) and the summary of every content: FULL
    blocks are told apart by their shape alone, PARTIAL ones by ``distinct_blocks``."""
    grid = layout.grid
    i, j, full = layout.rows()[order], layout.indices.astype(np.int64)[order], layout.full[order]
    q0, q1 = grid.q_bounds(i)
    k0, k1 = grid.k_bounds(j)
    content = np.empty(len(i), np.int64)
    shapes, full_content = np.zeros((2, 0), np.int64), np.zeros(0, np.int64)
    if full.any():
        shapes, full_content = np.unique(np.stack([q1 - q0, k1 - k0])[:, full], axis=1, return_inverse=True)
    content[full] = full_content.reshape(-1)
    partial = np.flatnonzero(~full)
    first, inverse = distinct_blocks(node, grid, i[partial], j[partial]) if len(partial) else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64))
    content[partial] = shapes.shape[1] + inverse.reshape(-1)
    rows = np.arange(grid.bq)[None, :, None]
    cols = np.arange(grid.bk)[None, None, :]
    full_masks = (rows < shapes[0][:, None, None]) & (cols < shapes[1][:, None, None])  # (F, bq, bk)
    heights = np.concatenate([shapes[0], (q1 - q0)[partial][first]])
    batch = max(1, PAIR_BUDGET // (grid.bq * grid.bk))
    parts = [_summarise(full_masks, shapes[0], max_runs)]
    for s in range(0, len(first), batch):
        chosen = partial[first[s: s + batch]]
        parts.append(_summarise(block_masks(node, grid, i[chosen], j[chosen]),
                                heights[shapes.shape[1] + s: shapes.shape[1] + s + batch], max_runs))
    return content, _Summary(*(np.concatenate([getattr(p, name) for p in parts])
                               for name in ("runs", "top", "bottom", "start", "end")))


def _summarise(masks: np.ndarray, heights: np.ndarray, max_runs: int) -> _Summary:
    """The summary of ``masks`` (m, bq, bk) whose valid rows are ``heights`` (m,)."""
    m, _, bk = masks.shape
    edge = np.zeros((m, 1, bk), bool)
    padded = np.concatenate([edge, masks, edge], axis=1)  # (m, bq + 2, bk)
    rises = padded[:, 1:] & ~padded[:, :-1]  # (m, bq + 1, bk): a run starts at this local row
    falls = ~padded[:, 1:] & padded[:, :-1]  # a run ends just before this local row
    top = masks[:, 0, :]
    bottom = masks[np.arange(m), np.maximum(heights, 1) - 1, :]
    return _Summary(rises.sum(axis=1), top, bottom, _nth(rises, max_runs), _nth(falls, max_runs))


def _nth(events: np.ndarray, max_runs: int) -> np.ndarray:
    """(m, bk, R): the row of the r-th event of each column (0 where there is none), found by
    taking the first event and clearing it, ``max_runs`` times (``events`` is consumed)."""
    m, _, bk = events.shape
    at = np.empty((m, bk, max_runs), np.int64)
    block, col = np.arange(m)[:, None], np.arange(bk)[None, :]
    for r in range(max_runs):
        at[:, :, r] = np.argmax(events, axis=1)  # (m, bk); 0 where a column has no event left
        events[block, at[:, :, r], col] = False
    return at


def _counts(grid, j: np.ndarray, content: np.ndarray, prev: np.ndarray, summary: _Summary,
            max_runs: int) -> tuple[np.ndarray, int | None]:
    """Runs of every key column: its blocks' runs less the joins between blocks one above the
    other, both summed per (block column, content) pair, never per block and column; block
    columns go in batches of bounded memory, and the first column past ``max_runs`` ends the count
    (returned second; the counts are then complete only up to its batch)."""
    count = np.zeros((grid.nbk, grid.bk), np.int64)
    below = np.flatnonzero(prev)  # block p continues block p - 1 of its column
    kinds = int(content.max(initial=0)) + 1
    pairs, times = _grouped(np.stack([j, content]), (grid.nbk, kinds))
    triples, joins = _grouped(np.stack([j[below], content[below - 1], content[below]]),
                              (grid.nbk, kinds, kinds))
    edges = [np.searchsorted(groups[0], np.arange(0, grid.nbk + 1)) for groups in (pairs, triples)]
    step = max(1, PAIR_BUDGET // grid.bk)
    start = 0
    while start < grid.nbk:
        # block columns [start, stop): as many as keep the (pairs + triples) x bk arrays in budget
        stop = start + 1
        while stop < grid.nbk and sum(e[stop + 1] - e[start] for e in edges) <= step:
            stop += 1
        p = slice(edges[0][start], edges[0][stop])
        t = slice(edges[1][start], edges[1][stop])
        np.add.at(count, pairs[0, p], summary.runs[pairs[1, p]] * times[p, None])
        joined = summary.bottom[triples[1, t]] & summary.top[triples[2, t]]  # (T, bk)
        np.add.at(count, triples[0, t], -joined.astype(np.int64) * joins[t, None])
        over = np.flatnonzero(count[start:stop].reshape(-1) > max_runs)
        if len(over):
            return count.reshape(-1)[: grid.n], start * grid.bk + int(over[0])
        start = stop
    return count.reshape(-1)[: grid.n], None


def _grouped(keys: np.ndarray, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct columns of ``keys`` (row r in [0, sizes[r])), sorted by the first row, and how
    often each occurs; folded into one integer per column, so a 1-D count or sort does it."""
    scales = np.cumprod((1, *sizes[:0:-1]))[::-1]  # mixed radix, first row most significant
    span = int(np.prod(sizes, dtype=object))
    if span <= DENSE_GROUPS:
        counts = np.bincount((scales[:, None] * keys).sum(axis=0), minlength=span)
        folded = np.flatnonzero(counts)
        counts = counts[folded]
    elif span < 2**62:
        folded, counts = np.unique((scales[:, None] * keys).sum(axis=0), return_counts=True)
    else:  # too many combinations to fold: sort the columns themselves
        found, counts = np.unique(keys, axis=1, return_counts=True)
        return found, counts
    return np.stack([(folded // scale) % size for scale, size in zip(scales, sizes, strict=True)]), counts


def _list_runs(grid, i, j, content, prev, summary: _Summary, max_runs: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each column's runs start and end, from the blocks that hold a run's start or end: a
    FULL block between two FULL blocks of its column holds neither, so it is skipped."""
    full_run = (summary.runs == 1) & summary.top & summary.bottom  # (U, bk): one run, top to bottom
    solid = full_run.all(axis=1)  # contents whose every column runs from top to bottom
    nxt = np.zeros(len(prev), bool)  # the block below is stored
    nxt[:-1] = prev[1:]
    inner = solid[content] & prev & nxt
    inner[prev] &= solid[content[np.flatnonzero(prev) - 1]]
    inner[nxt] &= solid[content[np.flatnonzero(nxt) + 1]]
    start = np.zeros((grid.n, max_runs), np.int64)
    end = np.zeros((grid.n, max_runs), np.int64)
    filled = np.zeros((2, grid.n), np.int64)  # runs listed so far per column: starts, ends
    held = np.flatnonzero(~inner)
    batch = max(1, PAIR_BUDGET // (grid.bk * max_runs))
    for s in range(0, len(held), batch):  # blocks in column order: a column's events come in order
        b = held[s: s + batch]
        u = content[b]
        q0 = i[b] * grid.bq
        k = j[b][:, None] * grid.bk + np.arange(grid.bk)[None, :]  # (m, bk)
        r = np.arange(max_runs)[None, None, :]
        exists = (r < summary.runs[u][:, :, None]) & (k < grid.n)[:, :, None]  # (m, bk, R)
        above = np.where(prev[b], content[np.maximum(b - 1, 0)], 0)
        below = np.where(nxt[b], content[np.minimum(b + 1, len(content) - 1)], 0)
        joined_top = (prev[b][:, None] & summary.top[u] & summary.bottom[above])[:, :, None]
        joined_bottom = (nxt[b][:, None] & summary.bottom[u] & summary.top[below])[:, :, None]
        last = r == (summary.runs[u][:, :, None] - 1)
        _append(start, filled[0], k, q0[:, None, None] + summary.start[u], exists & ~((r == 0) & joined_top))
        _append(end, filled[1], k, q0[:, None, None] + summary.end[u], exists & ~(last & joined_bottom))
    return start, end


def _append(out: np.ndarray, filled: np.ndarray, k: np.ndarray, rows: np.ndarray, keep: np.ndarray) -> None:
    """Append ``rows[keep]`` to the lists ``out[k]`` in order (k (m, bk), rows and keep (m, bk, R))."""
    col = np.broadcast_to(k[:, :, None], keep.shape)[keep]
    rows = rows[keep]
    order = np.lexsort((rows, col))  # by column; within a column, by row
    col, rows = col[order], rows[order]
    first = np.concatenate(([True], col[1:] != col[:-1]))
    rank = np.arange(len(col)) - np.maximum.accumulate(np.where(first, np.arange(len(col)), 0))
    out[col, filled[col] + rank] = rows
    np.add.at(filled, col, 1)
