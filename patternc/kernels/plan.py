"""How the reference kernel walks a block CSR: segments of rows that read their keys in place.

A query block row's stored blocks fall into runs of consecutive key blocks (a window's band, the
sink columns). Each run becomes one attention call over its keys, which lie contiguously in ``k``,
so no key is ever copied; a row's calls are merged by their log-sum-exp. Rows whose runs have the
same shape and content share one call when their keys sit at a fixed offset from the row (a
band: keys slide with the query) or at a fixed place (a sink: every row reads the same keys), and
their rows form an arithmetic progression, so queries, keys and outputs are all strided views.

A run that holds PARTIAL blocks carries a token mask; a long stretch of FULL blocks is cut out
of it and called without one (see ``MASK_SPAN``).

A row's fixed-place runs (the summary columns of Sparse Transformer's ``fixed``, a sink and global
columns) are joined into one call whose keys are gathered (``Segment.gather``): a copy of the keys
(O(keys x d), a block row's compute is 2 x bq times that) saves a call and a log-sum-exp merge per
run, which cost more than the run's scores when only a few of its columns are read.

>>> p = segments(patternc.compile("causal & window(64)", n=256, block=64), 0, 0, max_blocks=64)
>>> [(s.row0, s.rows, s.k_start, s.k_step, s.k_len) for s in p.segments]  # rows 1-3 slide; row 0 alone
[(1, 3, 0, 64, 128), (0, 1, 0, 0, 64)]
>>> cp = patternc.compile("causal & (window(512) | sink(64))", n=8192)
>>> [s.rows for s in segments(cp, 0, 0, max_blocks=64).segments][:2]  # 58 rows' bands, their 58 sinks
[58, 58]
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from patternc.compiled import per_pattern
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
    # the key token ranges [start, end) this call gathers into one run, block-aligned and in order
    # (k_len is their total); None: the keys lie contiguously at k_start, read in place
    gather: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The calls of one layout, in order, and the token ranges that no fresh store reaches (their
    running outputs must start at 0 before any merge)."""

    segments: tuple[Segment, ...]
    unstored: tuple[tuple[int, int], ...]  # [start, end) token ranges


@per_pattern
def partial_kinds(cp: CompiledPattern, layer: int, head: int) -> tuple[np.ndarray, np.ndarray]:
    """Token masks of PARTIAL blocks, each distinct content once (a window's edge blocks all look
    alike): ``kind`` (nnz,) int64 index into ``masks`` (u, bq, bk) bool, -1 for FULL blocks.

    >>> kind, masks = partial_kinds(patternc.compile("causal", n=256, block=64), 0, 0)
    >>> kind  # the 4 diagonal blocks share mask 0; the 6 below them are FULL
    array([ 0, -1,  0, -1, -1,  0, -1, -1, -1,  0])
    >>> masks.shape, bool((masks[0] == np.tril(np.ones((64, 64), bool))).all())
    ((1, 64, 64), True)
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


@dataclass(frozen=True, slots=True)
class _Run:
    """One row's call before grouping: the row reads keys ``[k_start, k_start + k_len)``."""

    row: int
    q_len: int
    k_start: int
    k_len: int
    kinds: tuple[int, ...] | None
    gather: tuple[tuple[int, int], ...] | None = None  # see ``Segment.gather``


@dataclass(frozen=True, slots=True)
class _Group:
    """What rows must share to share one call: their runs' shape and content, and where their keys
    sit, relative to the row's first query (``sliding``: a band) or in place (a sink)."""

    q_len: int
    anchor: int  # first key token, less the row's first query token when sliding
    k_len: int
    kinds: tuple[int, ...] | None
    sliding: bool
    gather: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def of(cls, run: _Run, sliding: bool, bq: int) -> _Group:
        anchor = run.k_start - run.row * bq if sliding else run.k_start
        return cls(run.q_len, anchor, run.k_len, run.kinds, sliding, run.gather)


@dataclass(frozen=True, slots=True)
class _Piece:
    """A row's consecutive stored blocks called together: CSR slots ``[slot, slot + blocks)``."""

    row: int
    slot: int
    blocks: int


@per_pattern
def segments(cp: CompiledPattern, layer: int, head: int, max_blocks: int) -> Plan:
    """The calls that cover every stored block of ``cp.layout(layer, head)`` once, each at most
    ``max_blocks`` key blocks long; largest first, so most rows are stored before any merge.

    >>> plan = segments(patternc.compile("causal", n=256, block=64), 0, 0, 64)
    >>> [(s.row0, s.k_len, s.kinds) for s in plan.segments]  # FULL blocks -1, then the diagonal's mask
    [(3, 256, (-1, -1, -1, 0)), (2, 192, (-1, -1, 0)), (1, 128, (-1, 0)), (0, 64, (0,))]
    """
    grid = cp.grid
    _, indices, _ = cp.layout(layer, head)
    kind, masks = partial_kinds(cp, layer, head)
    runs = []
    for piece in _pieces(cp, layer, head, max_blocks):
        col = int(indices[piece.slot])
        kinds = tuple(kind[piece.slot:piece.slot + piece.blocks].tolist())
        k_start = col * grid.bk
        runs.append(_Run(row=piece.row, q_len=min(grid.bq, grid.n - piece.row * grid.bq), k_start=k_start,
                         k_len=min((col + piece.blocks) * grid.bk, grid.n) - k_start,
                         kinds=None if max(kinds) < 0 else kinds))
    # A run slides with its row (band) or stays put (sink): join the larger of the two groups.
    slide = Counter(_Group.of(run, True, grid.bq) for run in runs)
    still = Counter(_Group.of(run, False, grid.bq) for run in runs)
    groups: dict[_Group, list[int]] = defaultdict(list)
    fixed: dict[int, list[_Run]] = defaultdict(list)  # per row, its runs that stay put
    for run in runs:
        if slide[_Group.of(run, True, grid.bq)] > still[_Group.of(run, False, grid.bq)]:
            groups[_Group.of(run, True, grid.bq)].append(run.row)
        else:
            fixed[run.row].append(run)
    seen = np.concatenate([masks.any(1).sum(-1), [grid.bk]])  # key columns each kind reads; [-1]: FULL
    for row_runs in fixed.values():
        for run in _joined(row_runs, grid.bk, max_blocks, seen):
            groups[_Group.of(run, False, grid.bq)].append(run.row)
    calls = []
    for g, rows in groups.items():
        for row0, step, count in _progressions(sorted(rows)):
            calls.append(Segment(row0=row0, row_step=step, rows=count, q_len=g.q_len,
                                 k_start=g.anchor + row0 * grid.bq if g.sliding else g.anchor,
                                 k_step=step * grid.bq if g.sliding else 0, k_len=g.k_len, kinds=g.kinds,
                                 fresh=False, gather=g.gather))
    calls.sort(key=lambda call: -call.rows * call.k_len)
    written = np.zeros(grid.nbq, bool)
    stored = np.zeros(grid.nbq, bool)
    out = []
    for call in calls:
        rows = call.row0 + call.row_step * np.arange(call.rows)
        fresh = not written[rows].any()
        out.append(replace(call, fresh=fresh))
        written[rows] = True
        stored[rows] |= fresh
    edges = np.flatnonzero(np.diff(np.concatenate([[False], ~stored, [False]])))  # starts, ends
    unstored = tuple((int(a) * grid.bq, min(int(b) * grid.bq, grid.n)) for a, b in edges.reshape(-1, 2))
    return Plan(tuple(out), unstored)


def _joined(runs: list[_Run], bk: int, max_blocks: int, seen: np.ndarray) -> list[_Run]:
    """A row's fixed-place runs (in key order), joined into gathered runs of at most ``max_blocks``
    blocks; a long FULL stretch (``MASK_SPAN``) keeps its own call, read in place without a mask. A
    lone run is gathered too when its queries read at most half of its key columns (``seen``: the
    columns each kind reads, ``seen[-1]`` a FULL block's): the summary columns of ``fixed`` next to
    a row's own chunk, which would otherwise be computed whole and masked."""
    out: list[_Run] = []
    group: list[_Run] = []

    def flush() -> None:
        if len(group) == 1:
            run = group[0]
            sparse = run.kinds is not None and 2 * int(seen[list(run.kinds)].sum()) <= run.k_len
            out.append(replace(run, gather=((run.k_start, run.k_start + run.k_len),)) if sparse else run)
        elif group:
            kinds = tuple(kind for run in group for kind in (run.kinds or (-1,) * -(-run.k_len // bk)))
            out.append(_Run(row=group[0].row, q_len=group[0].q_len, k_start=group[0].k_start,
                            k_len=sum(run.k_len for run in group), kinds=None if max(kinds) < 0 else kinds,
                            gather=tuple((run.k_start, run.k_start + run.k_len) for run in group)))
        group.clear()

    blocks = 0
    for run in runs:
        size = -(-run.k_len // bk)
        if run.kinds is None and size >= MASK_SPAN:
            out.append(run)
            continue
        if blocks + size > max_blocks:
            flush()
            blocks = 0
        group.append(run)
        blocks += size
    flush()
    return out


@dataclass(frozen=True, slots=True)
class _Stretch:
    """Consecutive stored blocks of one row, CSR slots ``[slot, slot + blocks)``; ``alone`` when it
    is a long FULL stretch that is called without a mask and joins nothing."""

    row: int
    slot: int
    blocks: int
    alone: bool


def _pieces(cp, layer, head, max_blocks) -> list[_Piece]:
    """Every call of every row: consecutive key blocks joined, a FULL stretch of ``MASK_SPAN`` or
    more kept apart, each piece at most ``max_blocks`` long."""
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
    stretches: list[_Stretch] = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        atom = _Stretch(row=int(rows[s]), slot=s, blocks=e - s,
                        alone=bool(full[s]) and e - s >= MASK_SPAN)  # a long FULL stretch: no mask
        last = stretches[-1] if stretches else None
        if (last and not atom.alone and not last.alone and last.row == atom.row
                and cols[s - 1] + 1 == cols[s]):
            stretches[-1] = replace(last, blocks=last.blocks + atom.blocks)  # last ends at slot s - 1
        else:
            stretches.append(atom)
    return [_Piece(row=st.row, slot=at, blocks=min(max_blocks, st.slot + st.blocks - at))
            for st in stretches for at in range(st.slot, st.slot + st.blocks, max_blocks)]


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
