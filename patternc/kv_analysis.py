"""KV-cache retention: which keys a decoder must keep, derived exactly from the compiled blocks.

When query ``t`` is computed, the keys that must be held to serve it and every later query are
``{k <= t : some t' >= t allows (t', k)}``. With ``last(k)``, the last query that reads key ``k``,
that is every key with ``k <= t <= last(k)``: the cache budget of a head is the largest number of
such keys at any ``t``, and key ``k`` can be evicted once query ``last(k)`` is done. A window of
4,096 plus 64 sinks needs 4,160 keys however long the context; a stride, a global token or a sink
keeps some keys to the end, and ``forever`` names the terms that do.

``last(k)`` comes from the blocks: a FULL block is read at every key by its last query; a PARTIAL
one at each key by its last allowed row, evaluated once per distinct block content (a window's
edge blocks all look alike); the latest over a key's column is its last reader. Work is
proportional to the blocks, never to the n x n pairs. Heads of one KV group (grouped-query
attention) share one cache: its keys are live while any head of the group still reads them.

>>> report = patternc.kv(patternc.compile("causal & (window(4096) | sink(64))", n=131072))
>>> report.max_live_keys[0][0], report.forever[0][0]
(4160, ('sink(64)',))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from patternc.compiled import CompiledPattern, whole_pattern
from patternc.errors import PatternMeaningError, brief, check_int
from patternc.layout import Layout
from patternc.lower.node import Lowered, block_masks, distinct_blocks

__all__ = ["DTYPE_BYTES", "KVReport", "kv", "last_reads", "live_keys"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1}


def last_reads(node: Lowered, layout: Layout) -> np.ndarray:
    """(n,) int64: the last query that reads each key, -1 for a key no query reads.

    >>> cp = patternc.compile("causal & window(3)", n=6, block=2)
    >>> last_reads(cp.node(), cp.layout())
    array([2, 3, 4, 5, 5, 5])
    """
    grid = layout.grid
    rows, cols = layout.rows(), layout.indices.astype(np.int64)
    q_last = np.minimum((rows + 1) * grid.bq, grid.n) - 1  # each stored block's last query
    per_key = np.full((grid.nbk, grid.bk), -1, np.int64)  # (nbk, bk): key block, key within it
    # a FULL block is read by its last query at every key
    full = layout.full
    latest_full = np.full(grid.nbk, -1, np.int64)
    np.maximum.at(latest_full, cols[full], q_last[full])
    per_key = np.maximum(per_key, latest_full[:, None])
    # a PARTIAL block: per key, its last allowed row, evaluated once per distinct content
    partial = np.flatnonzero(~full)
    if len(partial):
        i, j = rows[partial], cols[partial]
        first, inverse = distinct_blocks(node, grid, i, j)
        masks = block_masks(node, grid, i[first], j[first])  # (u, bq, bk), False past n
        read = masks.any(axis=1)  # (u, bk)
        last_row = np.where(read, grid.bq - 1 - np.argmax(masks[:, ::-1, :], axis=1), -1)
        # Blocks of one column and one content are read last by the latest of them: reduce to
        # (column, content) pairs first, then expand to keys in slices, so memory stays bounded
        # when a long sequence has millions of partial blocks.
        pair, slot = np.unique(j * len(first) + inverse, return_inverse=True)
        latest_row = np.full(len(pair), -1, np.int64)
        np.maximum.at(latest_row, slot.reshape(-1), i)
        pair_col, pair_content = pair // len(first), pair % len(first)
        step = max(1, (1 << 22) // grid.bk)
        for s in range(0, len(pair), step):
            col, content = pair_col[s : s + step], pair_content[s : s + step]
            row = last_row[content]  # (slice, bk), -1 where the content reads no key
            reader = np.where(row >= 0, latest_row[s : s + step, None] * grid.bq + row, -1)
            np.maximum.at(per_key, col, reader)
    return per_key.reshape(-1)[: grid.n]


def live_keys(last: np.ndarray) -> tuple[int, int]:
    """The largest number of keys ``k <= t <= last(k)`` at any query ``t``, and one such ``t``.

    >>> live_keys(np.array([2, 3, 4, 5, 5, 5]))
    (3, 2)
    """
    n = len(last)
    read = last >= np.arange(n)
    change = np.zeros(n + 1, np.int64)
    np.add.at(change, np.flatnonzero(read), 1)
    np.add.at(change, last[read] + 1, -1)
    live = np.cumsum(change[:n])
    t = int(np.argmax(live)) if n else 0
    return (int(live[t]) if n else 0), t


@dataclass(frozen=True, slots=True, eq=False)
class KVReport:
    """The KV cache a stack needs at length ``n``, per layer and KV head.

    ``max_live_keys[l][g]`` is KV head ``g``'s budget in layer ``l`` (its query heads' keys
    together); ``forever[l][h]`` the terms of query head ``h`` that keep keys to the end. ``bytes``
    sums every KV head's budget (K and V) at ``head_dim`` and ``dtype``; ``dense_bytes`` is a dense
    cache of all ``n`` keys.
    """

    n: int
    block: tuple[int, int]
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    max_live_keys: tuple[tuple[int, ...], ...]
    peak_at: tuple[tuple[int, ...], ...]  # a query position where each budget is reached
    forever: tuple[tuple[tuple[str, ...], ...], ...]
    _last: dict = field(repr=False)  # (layer, kv head) -> last_reads of the group

    @property
    def element_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def bytes(self) -> int:
        return sum(map(sum, self.max_live_keys)) * 2 * self.head_dim * self.element_bytes

    @property
    def dense_bytes(self) -> int:
        return self.layers * self.kv_heads * self.n * 2 * self.head_dim * self.element_bytes

    @property
    def ratio(self) -> float:
        return self.bytes / self.dense_bytes

    def last_reads(self, layer: int, kv_head: int) -> np.ndarray:
        """(n,) the last query that reads each key in this KV head's cache, -1 for none."""
        return self._last[layer, kv_head]

    def schedule(self, layer: int, kv_head: int) -> np.ndarray:
        """(nbk,) int64: per key block, the last query block that reads any of its keys (the block
        can be evicted after it), or -1 when no query reads it.

        >>> patternc.kv(patternc.compile("causal & window(3)", n=6, block=2)).schedule(0, 0)
        array([1, 2, 2])
        """
        last = self.last_reads(layer, kv_head)
        bk, bq = self.block[1], self.block[0]
        padded = np.full(-(-self.n // bk) * bk, -1, np.int64)
        padded[: self.n] = last
        latest = padded.reshape(-1, bk).max(axis=1)
        return np.where(latest >= 0, latest // bq, -1)

    def to_dict(self) -> dict:
        return {"n": self.n, "block": list(self.block), "layers": self.layers, "heads": self.heads,
                "kv_heads": self.kv_heads, "head_dim": self.head_dim, "dtype": self.dtype,
                "max_live_keys": [list(row) for row in self.max_live_keys],
                "peak_at": [list(row) for row in self.peak_at],
                "bytes": self.bytes, "dense_bytes": self.dense_bytes, "ratio": self.ratio,
                "forever": [[list(terms) for terms in row] for row in self.forever]}


def kv(compiled: CompiledPattern, kv_heads: int | None = None, head_dim: int = 128,
       dtype: str = "bfloat16") -> KVReport:
    """The KV-cache retention of a causal compiled stack (see the module docstring).

    ``kv_heads`` (default: the stack's ``kv_heads``, one per query head unless it says) groups
    query heads as PyTorch's ``enable_gqa`` does: query head ``h`` reads KV head
    ``h // (heads // kv_heads)``, and a KV head keeps what any of its query heads reads.

    >>> r = patternc.kv(patternc.compile("causal & (window(256) | stride(128))", n=4096))
    >>> r.forever[0][0], r.max_live_keys[0][0]
    (('stride(128)',), 3969)
    """
    cp = whole_pattern(compiled, "kv()", "needs every query (it follows keys to their last reader)")
    if not cp.causal:
        raise PatternMeaningError("kv(): the stack is not causal, so there is no order in which keys are "
                                  "written and read: a KV cache needs causal & ... in every head")
    kv_heads = cp.stack.kv_heads if kv_heads is None else kv_heads
    if isinstance(kv_heads, bool) or not isinstance(kv_heads, int) or kv_heads < 1 or cp.heads % kv_heads:
        raise PatternMeaningError(f"kv_heads must divide the stack's {cp.heads} heads, got {brief(kv_heads)}")
    check_int(head_dim, "kv(): head_dim")
    if dtype not in DTYPE_BYTES:
        raise PatternMeaningError(f"kv(): dtype must be one of {', '.join(DTYPE_BYTES)}, got {brief(dtype)}")
    group = cp.heads // kv_heads
    per_node: dict[Lowered, np.ndarray] = {}  # heads with one bound pattern share one computation
    per_group: dict[frozenset, tuple[np.ndarray, int, int]] = {}  # groups of the same patterns too
    budgets, peaks, forever, lasts = [], [], [], {}
    for l in range(cp.layers):
        row_budget, row_peak = [], []
        for g in range(kv_heads):
            heads = range(g * group, (g + 1) * group)
            nodes = frozenset(cp.node(l, h) for h in heads)
            if nodes not in per_group:
                for h in heads:
                    if cp.node(l, h) not in per_node:
                        per_node[cp.node(l, h)] = last_reads(cp.node(l, h), cp.layout(l, h))
                last = np.maximum.reduce([per_node[node] for node in nodes])
                per_group[nodes] = (last, *live_keys(last))
            last, budget, t = per_group[nodes]
            row_budget.append(budget)
            row_peak.append(t)
            lasts[l, g] = last  # shared, not copied, between groups of the same patterns
        budgets.append(tuple(row_budget))
        peaks.append(tuple(row_peak))
        forever.append(tuple(cp.node(l, h).forever(cp.n) for h in range(cp.heads)))
    return KVReport(cp.n, cp.block, cp.layers, cp.heads, kv_heads, head_dim, dtype, tuple(budgets),
                    tuple(peaks), tuple(forever), lasts)
