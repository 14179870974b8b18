"""Decoding under a pattern: a paged KV cache that holds only the key blocks some later query still
reads, and attention of the newest queries over it.

``DecodeCache(cp, layer)`` keeps one layer's keys and values in a pool of block-sized slots (a block
table maps each key block to its slot, as paged attention does). The eviction schedule is the
pattern's (``patternc.kv``): key block ``j`` is kept until the last query block that reads it is
done, for every KV head of the layer together, so a window of 4,096 plus 64 sinks holds about
4,160 keys per head (plus the block-rounding of its edges) however long the context. A key block no
query reads is never stored.

``append(k, v)`` writes the next tokens' keys and values (first evicting what no query from the
first new position on reads); ``attend(q)`` computes the newest ``s`` queries (positions
``[length - s, length)``) over the blocks their rows of the layout name, exactly: a stored block's
pairs are evaluated from the pattern, so the result equals dense attention with the dense mask at
those rows. ``cp`` is compiled at the whole length ``n`` the cache serves (the decode budget), and
row ``t`` means what it means in that pattern.

>>> import torch
>>> cp = patternc.compile("causal & (sink(4) | window(32))", n=256, block=16)
>>> cache = DecodeCache(cp, layer=0, head_dim=8, dtype=torch.float32)
>>> k, v, q = torch.randn(3, 1, 1, 256, 8, generator=torch.Generator().manual_seed(0))  # (B, H, n, d)
>>> cache.prefill(k[:, :, :199], v[:, :, :199])      # a prompt of 199 tokens, computed elsewhere
>>> cache.append(k[:, :, 199:200], v[:, :, 199:200])  # the next token
>>> out = cache.attend(q[:, :, 199:200])              # (B, H, 1, d): query 199
>>> cache.held_keys(), cache.length                   # the sink's block and the window's 3 blocks
(56, 200)
>>> torch.allclose(out, reference_decode(q[:, :, 199:200], k[:, :, :200], v[:, :, :200], cp, 0), atol=1e-6)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from patternc.errors import KernelInputError, brief

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["DecodeCache", "dense_decode", "reference_decode"]


class DecodeCache:
    """One layer's paged KV cache under a causal pattern (see the module docstring).

    ``kv_heads`` defaults to the stack's; query head ``h`` reads KV head ``h // (heads // kv_heads)``.
    """

    def __init__(self, cp: CompiledPattern, layer: int = 0, *, batch: int = 1, kv_heads: int | None = None,
                 head_dim: int = 64, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        from patternc.kv import kv

        cp.node(layer, 0)  # refuses a layer outside the stack
        kv_heads = cp.stack.kv_heads if kv_heads is None else kv_heads
        for name, value in (("batch", batch), ("head_dim", head_dim), ("kv_heads", kv_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise KernelInputError(f"DecodeCache: {name} must be a positive integer, got {brief(value)}")
        report = kv(cp, kv_heads=kv_heads)  # refuses a non-causal stack or a query range
        self.cp, self.layer, self.batch, self.kv_heads, self.head_dim = cp, layer, batch, kv_heads, head_dim
        self.grid = grid = cp.grid
        # (nbk,) the last query block that reads key block j in any KV head; -1: never read
        self.evict_after = np.max([report.schedule(layer, g) for g in range(kv_heads)], axis=0)
        self.length = 0
        self.table = np.full(grid.nbk, -1, np.int64)  # key block -> slot, -1 when not held
        self._free = list(range(_capacity(self.evict_after, grid)))[::-1]
        self.slot_block = np.full(len(self._free), -1, np.int64)  # slot -> key block held there
        shape = (batch, kv_heads, len(self._free), grid.bk, head_dim)  # (B, Hkv, slots, bk, d)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # zeros: a slot never holds NaN
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        group = cp.heads // kv_heads
        # One call per KV head and bound pattern: the query heads of a group that share a pattern
        # attend as one batch. (One call over every KV head is slower on CPU: a gather along the
        # pool's slot axis and SDPA over 8 heads of one query each measured 40x and 3x slower.)
        self._calls: list[tuple[int, list[int]]] = []  # (kv head, query heads)
        for g in range(kv_heads):
            by_node: dict = {}
            for h in range(g * group, (g + 1) * group):
                by_node.setdefault(cp.node(layer, h), []).append(h)
            self._calls += [(g, heads) for heads in by_node.values()]
        self._one_pattern = len({cp.node(layer, h) for h in range(cp.heads)}) == 1

    def held_keys(self) -> int:
        """Key positions held now (whole blocks, up to ``length``)."""
        held = np.flatnonzero(self.table >= 0)
        return int(np.minimum((held + 1) * self.grid.bk, self.length).sum() - (held * self.grid.bk).sum())

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys and values (B, Hkv, s, d) for positions ``[length, length + s)``, whose queries
        ``attend`` computes next (first evicting what no query from ``length`` on reads)."""
        self._write(k, v, next_query=self.length)

    def prefill(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the keys and values (B, Hkv, s, d) of a prompt whose queries were computed elsewhere
        (a prefill through the block-sparse kernel): only what queries from ``length + s`` on read
        is kept."""
        self._write(k, v, next_query=self.length + k.shape[2])

    def _write(self, k: torch.Tensor, v: torch.Tensor, next_query: int) -> None:
        s = k.shape[2]
        self._check_kv(k, v)
        if self.length + s > self.grid.n:
            raise KernelInputError(f"DecodeCache: {s} more tokens after {self.length:,} pass n = "
                                   f"{self.grid.n:,}, the length the pattern was compiled for")
        keep = next_query // self.grid.bq  # the first query block still to be computed
        self._evict(keep)
        bk, start = self.grid.bk, self.length
        for j in range(start // bk, -(-(start + s) // bk)):
            if self.evict_after[j] < keep:
                continue  # no query still to come reads this block: never stored
            if self.table[j] < 0:
                self.table[j] = self._slot()
                self.slot_block[self.table[j]] = j
            lo, hi = max(start, j * bk), min(start + s, (j + 1) * bk)
            slot = int(self.table[j])
            self.k[:, :, slot, lo - j * bk: hi - j * bk] = k[:, :, lo - start: hi - start]
            self.v[:, :, slot, lo - j * bk: hi - j * bk] = v[:, :, lo - start: hi - start]
        self.length += s

    def attend(self, q: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """(B, H, s, d): attention of the queries q (B, H, s, d) at positions ``[length - s, length)``;
        a query with no allowed key gets 0."""
        B, H, s, d = q.shape
        if (B, H, d) != (self.batch, self.cp.heads, self.head_dim) or s < 1 or s > self.length:
            raise KernelInputError(f"DecodeCache.attend: q must be (batch {self.batch}, heads "
                                   f"{self.cp.heads}, 1..{self.length} queries, head_dim {self.head_dim}), "
                                   f"got {tuple(q.shape)}")
        out = q.new_zeros(q.shape)
        grid, t0 = self.grid, self.length - s
        for i in range(t0 // grid.bq, (self.length - 1) // grid.bq + 1):  # the query blocks of the rows
            lo, hi = max(t0, i * grid.bq), min(self.length, (i + 1) * grid.bq)
            rows = self._rows(i, np.arange(lo, hi), q.device)
            index, mask = next(iter(rows.values()))
            if self._one_pattern and index is None and mask is not None:  # one call, the pool in place
                k, v = (x.flatten(2, 3) for x in (self.k, self.v))  # (B, Hkv, slots * bk, d)
                o = F.scaled_dot_product_attention(q[:, :, lo - t0: hi - t0], k, v, attn_mask=mask,
                                                   scale=scale, enable_gqa=self.kv_heads != H)  # (B, H, r, d)
                out[:, :, lo - t0: hi - t0] = torch.where(mask.any(dim=1)[:, None], o, 0.0)
                continue
            for g, heads in self._calls:
                index, mask = rows[self.cp.node(self.layer, heads[0])]
                if mask is None:
                    continue  # a row without stored blocks: its output stays 0
                if index is None:  # the whole pool, in place: (B, 1, slots * bk, d)
                    k, v = (x[:, g].flatten(1, 2)[:, None] for x in (self.k, self.v))
                else:  # the row's blocks, gathered: (B, 1, m * bk, d)
                    k, v = (x[:, g].index_select(1, index).flatten(1, 2)[:, None] for x in (self.k, self.v))
                o = F.scaled_dot_product_attention(q[:, heads, lo - t0: hi - t0], k, v, attn_mask=mask,
                                                   scale=scale, enable_gqa=len(heads) > 1)  # (B, G, r, d)
                out[:, heads, lo - t0: hi - t0] = torch.where(mask.any(dim=1)[:, None], o, 0.0)  # not NaN
        return out

    def _rows(self, i: int, queries: np.ndarray, device) -> dict:
        """Per bound pattern of the layer: the slots its row ``i`` reads and the mask of the
        ``queries`` over their keys (r, m * bk), built once per call, not per KV head. When the row
        reads at least half of what is held (a window: nearly all of it), the slots are None and the
        mask covers the whole pool (r, slots * bk): attending over the pool in place costs what a
        gather of the row's blocks would copy, and the pool holds what the pattern retains."""
        rows = {}
        for h in range(self.cp.heads):
            node = self.cp.node(self.layer, h)
            if node in rows:
                continue
            layout = self.cp.layout(self.layer, h)
            cols = layout.indices[layout.indptr[i]: layout.indptr[i + 1]].astype(np.int64)
            cols = cols[cols * self.grid.bk < self.length]  # blocks after the newest key: nothing yet
            if len(cols) == 0:
                rows[node] = (None, None)  # nothing to read
                continue
            slots = self.table[cols]
            if (slots < 0).any():  # the schedule keeps every block a row reads: this would be a bug
                raise KernelInputError(f"DecodeCache: key block {int(cols[slots < 0][0])} is read by query "
                                       f"block {i} but is not held")
            whole_pool = 2 * len(cols) >= (self.slot_block >= 0).sum()
            blocks = self.slot_block if whole_pool else cols  # the key block of each position's block
            keys = (blocks[:, None] * self.grid.bk + np.arange(self.grid.bk)).reshape(-1)  # (m * bk,)
            held = np.repeat(blocks >= 0, self.grid.bk)
            allowed = node.predicate(queries[:, None], keys[None, :]) & held & (keys < self.length)
            mask = torch.from_numpy(np.ascontiguousarray(allowed)).to(device)  # (r, m * bk)
            rows[node] = (None if whole_pool else torch.from_numpy(slots).to(device), mask)
        return rows

    def _evict(self, query_block: int) -> None:
        gone = np.flatnonzero((self.table >= 0) & (self.evict_after < query_block))
        self._free += self.table[gone].tolist()
        self.slot_block[self.table[gone]] = -1
        self.table[gone] = -1

    def _slot(self) -> int:
        if not self._free:  # a chunk longer than a query block can hold more at once: grow the pool
            grow = self.k.shape[2]
            self._free = list(range(2 * grow - 1, grow - 1, -1))
            self.k, self.v = (torch.cat([x, torch.zeros_like(x)], dim=2) for x in (self.k, self.v))
            self.slot_block = np.concatenate([self.slot_block, np.full(grow, -1, np.int64)])
        return self._free.pop()

    def _check_kv(self, k: torch.Tensor, v: torch.Tensor) -> None:
        B, Hk, s, d = k.shape
        if k.shape != v.shape or (B, Hk, d) != (self.batch, self.kv_heads, self.head_dim) or s < 1:
            raise KernelInputError(f"DecodeCache.append: k and v must both be (batch {self.batch}, "
                                   f"kv_heads {self.kv_heads}, s >= 1, head_dim {self.head_dim}), got "
                                   f"{tuple(k.shape)} and {tuple(v.shape)}")


def _capacity(evict_after: np.ndarray, grid) -> int:
    """Slots for the most key blocks held while one query block is computed: block ``j`` is held
    from the query block that writes its first key to the last one that reads it."""
    read = np.flatnonzero(evict_after >= 0)
    if len(read) == 0:
        return 1
    first = (read * grid.bk) // grid.bq
    change = np.zeros(grid.nbq + 1, np.int64)
    np.add.at(change, first, 1)
    np.add.at(change, evict_after[read] + 1, -1)
    return max(1, int(np.cumsum(change).max()) + 1)  # + 1: a block written before its row computes


def reference_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cp: CompiledPattern, layer: int = 0,
                     scale: float | None = None) -> torch.Tensor:
    """The oracle: q (B, H, s, d), the last s of the positions ``[0, m)`` of k, v (B, Hkv, m, d),
    by SDPA with the pattern's dense mask at those rows (0 for a row without keys)."""
    s, m, H = q.shape[2], k.shape[2], q.shape[1]
    queries, keys = np.arange(m - s, m), np.arange(m)
    group = H // k.shape[1]
    out = q.new_zeros(q.shape)
    for h in range(H):
        allowed = torch.from_numpy(cp.node(layer, h).predicate(queries[:, None], keys[None, :]))
        o = F.scaled_dot_product_attention(q[:, h: h + 1], k[:, h // group: h // group + 1],
                                           v[:, h // group: h // group + 1], attn_mask=allowed, scale=scale)
        out[:, h: h + 1] = torch.where(allowed.any(dim=1)[:, None], o, 0.0)
    return out


def dense_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool = False) -> torch.Tensor:
    """Dense decode, the baseline: the newest queries q (B, H, s, d) over every cached key k, v
    (B, Hkv, m, d), causal among themselves."""
    s, m = q.shape[2], k.shape[2]
    mask = None if s == 1 else torch.ones(s, m, dtype=torch.bool, device=q.device).tril(m - s)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=enable_gqa)
