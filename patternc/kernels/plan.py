"""How the reference kernel walks a block CSR: segments of rows that read their keys in place.

A query block row's stored blocks fall into runs of consecutive key blocks (a window's band, the
sink columns). Each run becomes one attention call over its keys, which lie contiguously in ``k``,
so no key is ever copied; a row's calls are merged by their log-sum-exp. Rows whose runs have the
same shape and content share one call when their keys sit at a fixed offset from the row (a
band: keys slide with the query) or at a fixed place (a sink: every row reads the same keys), and
their rows form an arithmetic progression, so queries, keys and outputs are all strided views.

A run that holds PARTIAL blocks carries a token mask; a long stretch of FULL blocks is cut out
of it and called without one (see ``MASK_SPAN``).

>>> cp = patternc.compile("causal & (window(512) | sink(64))", n=8192)   # doctest: +SKIP
>>> [s.rows for s in segments(cp, 0, 0, max_blocks=64).segments][:2]     # doctest: +SKIP
[58, 58]
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from patternc.lower.node import block_masks, distinct_blocks

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["MASK_SPAN", "Plan", "Segment", "partial_kinds", "segments"]

# FULL runs at least this long are called without a mask: adding the mask costs ~12% of a FULL
# block in SDPA's CPU kernel, a separate call and its merge cost ~0.3 block (measured, d = 64)
MASK_SPAN = 16


@dataclass(frozen=True, slots=True)
class Segment:
    """One attention call: ``rows`` query block rows ``row0, row0 + row_step, ...``; row ``r`` of
    them reads the keys ``[k_start + r * k_step, ... + k_len)`` (tokens)."""

    row0: int
    row_step: int  # block rows between consecutive rows of the call
    rows: int
    q_len: int  # query tokens per row (short only for a truncated last block row)
    k_start: int
    k_step: int  # 0 when every row reads the same keys (sinks, global columns)
    k_len: int
    kinds: tuple[int, ...] | None  # content id per key block (-1 FULL); None: all FULL, no mask
    fresh: bool  # no earlier segment writes these rows: store instead of merge


@dataclass(frozen=True, slots=True)
class Plan:
    """The calls of one layout, in order, and the token ranges that no fresh store reaches (their
    running outputs must start at 0 before any merge)."""

    segments: tuple[Segment, ...]
    unstored: tuple[tuple[int, int], ...]  # [start, end) token ranges


@lru_cache(maxsize=16)
def partial_kinds(cp: CompiledPattern, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """Token masks of PARTIAL blocks, each distinct content once (a window's edge blocks all look
    alike): ``kind`` (nnz,) int64 index into ``masks`` (u, bq, bk) bool, -1 for FULL blocks.

    >>> kind, masks = partial_kinds(patternc.compile("causal", n=256, block=64), 0, 0)  # doctest: +SKIP
    >>> masks.shape                                                                       # doctest: +SKIP
    (1, 64, 64)
    """
    indptr, indices, full = cp.layout(layer, head)
    kind = np.full(len(indices), -1, np.int64)
    partial = np.flatnonzero(~full)
    if len(partial) == 0:
        return kind, np.zeros((0, cp.grid.bq, cp.grid.bk), bool)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))[partial]
    cols = indices[partial].astype(np.int64)
    node = cp.node(layer, head)
    first, inverse = distinct_blocks(node, cp.grid, rows, cols)
    masks = block_masks(node, cp.grid, rows[first], cols[first])  # (u, bq, bk), False past n
    # Keys may tell equal contents apart (a union keys each side: the sink block of every row
    # gets its own key from the window's); equal masks must share an id, or their rows never
    # share a call.
    same: dict[bytes, int] = {}
    merged = np.array([same.setdefault(np.packbits(m).tobytes(), len(same)) for m in masks])
    kind[partial] = merged[inverse]
    keep = np.unique(merged, return_index=True)[1]  # first mask of each content, in id order
    return kind, masks[keep]


@lru_cache(maxsize=16)
def segments(cp: CompiledPattern, layer: int, head: int, max_blocks: int) -> Plan:
    """The calls that cover every stored block of ``cp.layout(layer, head)`` once, each at most
    ``max_blocks`` key blocks long; largest first, so most rows are stored before any merge.

    >>> segments(patternc.compile("causal", n=256, block=64), 0, 0, 64).segments[0].kinds  # doctest: +SKIP
    (0,)
    """
    grid = cp.grid
    _, indices, _ = cp.layout(layer, head)
    kind, _ = partial_kinds(cp, layer, head)
    described = []
    for row, slot, blocks in _pieces(cp, layer, head, max_blocks):
        col = int(indices[slot])
        kinds = tuple(kind[slot:slot + blocks].tolist())
        q_len = min(grid.bq, grid.n - row * grid.bq)
        k_start = col * grid.bk
        k_len = min((col + blocks) * grid.bk, grid.n) - k_start
        described.append((row, q_len, k_start, k_len, None if max(kinds) < 0 else kinds))
    # A piece slides with its row (band) or stays put (sink): join the larger of the two groups.
    slide = Counter((q, k0 - r * grid.bq, kl, ks) for r, q, k0, kl, ks in described)
    still = Counter((q, k0, kl, ks) for r, q, k0, kl, ks in described)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for r, q, k0, kl, ks in described:
        sliding = slide[q, k0 - r * grid.bq, kl, ks] > still[q, k0, kl, ks]
        groups[(q, k0 - r * grid.bq if sliding else k0, kl, ks, sliding)].append(r)
    calls = []
    for (q_len, anchor, k_len, kinds, sliding), rows in groups.items():
        for row0, step, count in _progressions(sorted(rows)):
            k_start = anchor + row0 * grid.bq if sliding else anchor
            calls.append((row0, step, count, q_len, k_start, step * grid.bq if sliding else 0, k_len, kinds))
    calls.sort(key=lambda c: -c[2] * c[6])
    written = np.zeros(grid.nbq, bool)
    stored = np.zeros(grid.nbq, bool)
    out = []
    for c in calls:
        rows = c[0] + c[1] * np.arange(c[2])
        fresh = not written[rows].any()
        out.append(Segment(*c, fresh=fresh))
        written[rows] = True
        stored[rows] |= fresh
    edges = np.flatnonzero(np.diff(np.concatenate([[False], ~stored, [False]])))  # starts, ends
    unstored = tuple((int(a) * grid.bq, min(int(b) * grid.bq, grid.n)) for a, b in edges.reshape(-1, 2))
    return Plan(tuple(out), unstored)


def _pieces(cp, layer, head, max_blocks) -> list[tuple[int, int, int]]:
    """``(row, first CSR slot, blocks)`` of every call of every row: consecutive key blocks joined,
    a FULL stretch of ``MASK_SPAN`` or more kept apart, each piece at most ``max_blocks`` long."""
    indptr, indices, full = cp.layout(layer, head)
    nnz = len(indices)
    if nnz == 0:
        return []
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    cols = indices.astype(np.int64)
    # atoms: maximal stretches of one row, consecutive columns and one fullness
    cut = np.ones(nnz, bool)
    cut[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1) | (full[1:] != full[:-1])
    starts = np.flatnonzero(cut)
    ends = np.append(starts[1:], nnz)
    pieces: list[list] = []  # [row, first slot, blocks, alone]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        alone = bool(full[s]) and e - s >= MASK_SPAN  # a long FULL stretch: no mask
        last = pieces[-1] if pieces else None
        if last and not alone and not last[3] and last[0] == rows[s] and cols[s - 1] + 1 == cols[s]:
            last[2] += e - s  # the previous atom ends at slot s - 1 in the same row: join it
        else:
            pieces.append([int(rows[s]), s, e - s, alone])
    return [(row, at, min(max_blocks, slot + length - at))
            for row, slot, length, _ in pieces for at in range(slot, slot + length, max_blocks)]


def _progressions(rows: list[int]) -> list[tuple[int, int, int]]:
    """Split sorted distinct rows into maximal arithmetic progressions ``(first, step, count)``.

    >>> _progressions([0, 1, 2, 5, 7, 9, 10])
    [(0, 1, 3), (5, 2, 3), (10, 1, 1)]
    """
    out = []
    i = 0
    while i < len(rows):
        step = rows[i + 1] - rows[i] if i + 1 < len(rows) else 1
        j = i + 1
        while j < len(rows) and rows[j] - rows[j - 1] == step:
            j += 1
        out.append((rows[i], step, j - i))
        i = j
    return out
