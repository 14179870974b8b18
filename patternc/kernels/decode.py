"""Decoding under a pattern: a paged KV cache that holds only the keys some later query still reads,
and attention of the newest queries over what it holds.

``DecodeCache(cp, layer)`` keeps one layer's keys and values in pools of ``page``-token pages, each
key's position beside it. Eviction follows the pattern exactly (``patternc.kv``): each key's last
reader is known, a key goes to a page of keys that die with it, and a page goes back to the free
list once every key on it is past its last reader. So a window of 4,096 plus 64 sinks holds about
4,160 keys per head however long the context, and a stride's columns, kept to the end, pack into
pages of their own. A key no later query reads is never stored. KV heads whose query heads read the
same keys share one pool; a per-head stack gives each KV head the union of what its query heads
read, and no more.

``append(k, v)`` writes the next tokens' keys and values (first evicting what no query from the
first new position on reads); ``attend(q)`` computes the newest ``s`` queries (positions
``[length - s, length)``, within the last append) over the keys they read, exactly: each held key's
position is known, the pattern's predicate decides, and the result equals dense attention with the
dense mask at those rows. A row that reads most of what is held attends the pool in place under a
mask; one that reads a few keys of many (a stride that keeps every key) gathers just those.
``prefill(k, v)`` writes a prompt whose queries were computed elsewhere (the block-sparse kernel),
keeping only what later queries read. ``cp`` is compiled at the whole length ``n`` the cache serves,
and row ``t`` means what it means in that pattern.

>>> import torch
>>> cp = patternc.compile("causal & (sink(4) | window(32))", n=256, block=16)
>>> cache = DecodeCache(cp, layer=0, head_dim=8, dtype=torch.float32)
>>> k, v, q = torch.randn(3, 1, 1, 256, 8, generator=torch.Generator().manual_seed(0))  # (B, H, n, d)
>>> cache.prefill(k[:, :, :199], v[:, :, :199])      # a prompt of 199 tokens, computed elsewhere
>>> cache.append(k[:, :, 199:200], v[:, :, 199:200])  # the next token
>>> out = cache.attend(q[:, :, 199:200])              # (B, H, 1, d): query 199
>>> cache.held_keys(), cache.length   # the 4 sinks and the window's 32 keys, in pages of 16
(36, 200)
>>> torch.allclose(out, reference_decode(q[:, :, 199:200], k[:, :, :200], v[:, :, :200], cp, 0), atol=1e-6)
True
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from patternc.errors import KernelInputError, brief, check_int
from patternc.kernels.inputs import DTYPES, device_memory, dtype_name
from patternc.limits import require

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.kv_analysis import KVReport
    from patternc.lower.node import Lowered

__all__ = ["PAGE", "DecodeCache", "dense_decode", "reference_decode"]

PAGE = 16  # tokens per page: vLLM's default block; page-rounding then costs at most 15 keys per run
GATHER_BELOW = 0.5  # a row that reads less than this share of its pool gathers its keys (see attend)


class _Pool:
    """The pages of the KV heads that read the same keys: one (B, Hp, slots * page, d) pool.

    A key goes to a page of keys that die with it: its class is its last reader // page, and each
    class fills one open page at a time. A window's keys die in the order they came, sinks and a
    stride's columns at the end, so a stride that keeps every fifth key holds a fifth of the pages,
    not every page it touched, and a page returns to the free list within ``page`` queries of its
    keys' last reader."""

    def __init__(self, kv_heads: list[int], queries: dict, last: np.ndarray, page: int) -> None:
        self.kv_heads = kv_heads
        self.queries = queries  # bound pattern -> the query heads of these KV heads that it rules
        self.last = last  # (n,) the last query that reads each key, -1 for none
        self.page = page
        self.slot_last = np.zeros(0, np.int64)  # slot -> the last reader of its keys, -1 when free
        self.positions = np.zeros(0, np.int64)  # (slots * page,) each pool row's key position, -1: none
        self.open: dict[int, tuple[int, int]] = {}  # class -> (its page being filled, rows used)
        self.free: list[int] = []
        self.peak = 0  # most keys held at once
        self.capacity = 1  # pages a decode needs (_decode_pages); the pool shrinks back to it (compact)
        self.k = self.v = None  # (B, Hp, slots * page, d), allocated by DecodeCache

    def held_pages(self) -> int:
        return int((self.slot_last >= 0).sum())

    def held_keys(self) -> int:
        return int((self.positions >= 0).sum())

    def evict(self, next_query: int) -> None:
        """Free the pages whose every key is past its last reader."""
        gone = np.flatnonzero((self.slot_last >= 0) & (self.slot_last < next_query))
        if len(gone) == 0:
            return
        self.positions.reshape(-1, self.page)[gone] = -1
        self.slot_last[gone] = -1
        self.free += gone.tolist()
        dead = set(gone.tolist())
        self.open = {c: (slot, used) for c, (slot, used) in self.open.items() if slot not in dead}

    def compact(self) -> np.ndarray | None:
        """Renumber the held pages ``0, 1, ...`` in their order, and the free ones after them down to
        ``capacity`` pages: the old slot of each new one, or None when nothing would shrink (the
        caller moves the pages). A chunked prefill grows the pool by a chunk; decoding after it reads
        the held keys in place only in a pool of about their size (``GATHER_BELOW``)."""
        held = np.flatnonzero(self.slot_last >= 0)
        slots = max(self.capacity, len(held))
        if slots >= len(self.slot_last):
            return None
        new_of = np.full(len(self.slot_last), -1, np.int64)
        new_of[held] = np.arange(len(held))
        rows = (held[:, None] * self.page + np.arange(self.page)).ravel()
        self.positions = np.concatenate([self.positions[rows], np.full((slots - len(held)) * self.page, -1)])
        self.slot_last = np.concatenate([self.slot_last[held], np.full(slots - len(held), -1, np.int64)])
        self.open = {c: (int(new_of[slot]), used) for c, (slot, used) in self.open.items()}
        self.free = list(range(slots - 1, len(held) - 1, -1))
        return held

    def place(self, keys: np.ndarray) -> np.ndarray | None:
        """Pool rows (m,) for the keys (m,), in their order; None when the free pages are too few
        (grow the pool and ask again: nothing has changed)."""
        page = self.page
        if len(keys) == 1:  # a decode step: the same as below, without sorting one key
            dies = int(self.last[keys[0]])
            slot, used = self.open.get(dies // page, (-1, page))
            if used == page:
                if not self.free:
                    return None
                slot, used = self.free.pop(), 0
            self.slot_last[slot] = max(self.slot_last[slot], dies)
            self.open[dies // page] = (slot, used + 1)
            return np.array([slot * page + used])
        classes = self.last[keys] // page
        order = np.argsort(classes, kind="stable")
        found, starts, counts = np.unique(classes[order], return_index=True, return_counts=True)
        needed = sum(-(-(count - (page - self.open[c][1] if c in self.open else 0)) // page)
                     for c, count in zip(found.tolist(), counts.tolist(), strict=True))
        if needed > len(self.free):
            return None
        rows = np.empty(len(keys), np.int64)
        for c, start, count in zip(found.tolist(), starts.tolist(), counts.tolist(), strict=True):
            members = order[start: start + count]
            slot, used = self.open.get(c, (-1, page))
            done = 0
            while done < count:
                if used == page:
                    slot, used = self.free.pop(), 0
                take = min(page - used, count - done)
                rows[members[done: done + take]] = slot * page + used + np.arange(take)
                dies = int(self.last[keys[members[done: done + take]]].max())
                self.slot_last[slot] = max(self.slot_last[slot], dies)
                used, done = used + take, done + take
            self.open[c] = (slot, used)
        return rows


class DecodeCache:
    """One layer's paged KV cache under a causal pattern (see the module docstring).

    ``kv_heads`` defaults to the stack's; query head ``h`` reads KV head ``h // (heads // kv_heads)``.
    ``page``: tokens per page. ``report``: ``patternc.kv(cp, kv_heads)``, when the caller has it (a
    model's caches share one).
    """

    def __init__(self, cp: CompiledPattern, layer: int = 0, *, batch: int = 1, kv_heads: int | None = None,
                 head_dim: int = 64, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 page: int = PAGE, report: KVReport | None = None):
        from patternc.compiled import CompiledPattern
        from patternc.kv_analysis import kv

        if not isinstance(cp, CompiledPattern):
            raise KernelInputError(f"DecodeCache: cp must be a compiled pattern (patternc.compile(...)), got "
                                   f"{type(cp).__name__}")
        cp.node(layer, 0)  # refuses a layer outside the stack
        kv_heads = cp.stack.kv_heads if kv_heads is None else kv_heads
        for name, value in (("batch", batch), ("head_dim", head_dim), ("kv_heads", kv_heads), ("page", page)):
            check_int(value, f"DecodeCache: {name}", error=KernelInputError)
        if not isinstance(dtype, torch.dtype) or dtype not in DTYPES:
            raise KernelInputError(f"DecodeCache: dtype must be one of {', '.join(map(dtype_name, DTYPES))}, "
                                   f"got {brief(dtype)}")
        device = torch.device(device)
        report = kv(cp, kv_heads=kv_heads) if report is None else report  # refuses a non-causal stack
        if (report.n, report.kv_heads) != (cp.n, kv_heads):
            raise KernelInputError(f"DecodeCache: the report is for n = {report.n:,} and {report.kv_heads} "
                                   f"KV heads, the cache for n = {cp.n:,} and {kv_heads}")
        self.cp, self.layer, self.batch, self.kv_heads, self.head_dim = cp, layer, batch, kv_heads, head_dim
        self.page, self.dtype, self.device = page, dtype, device
        self.length = 0
        self._pending_from = 0  # the first query attend may compute: the first position of the last append
        self.written = np.zeros(kv_heads, np.int64)  # keys stored so far, per KV head
        group = cp.heads // kv_heads
        by_nodes: dict[frozenset, _Pool] = {}
        self.pools: list[_Pool] = []
        for g in range(kv_heads):
            heads = range(g * group, (g + 1) * group)
            nodes = frozenset(cp.node(layer, h) for h in heads)
            if nodes not in by_nodes:
                by_nodes[nodes] = _Pool([], {}, report.last_reads(layer, g), page)
                self.pools.append(by_nodes[nodes])
            pool = by_nodes[nodes]
            pool.kv_heads.append(g)
            for h in heads:
                pool.queries.setdefault(cp.node(layer, h), []).append(h)
        slots = [_decode_pages(pool.last, page) for pool in self.pools]
        for pool, count in zip(self.pools, slots, strict=True):
            pool.capacity = count
        # the whole pool, before anything is allocated: a huge batch or head_dim is refused here
        per_slot = 2 * batch * page * head_dim * dtype.itemsize
        pages = sum(len(p.kv_heads) * s for p, s in zip(self.pools, slots, strict=True))
        require(pages * per_slot, device_memory(device),
                f"bytes of the KV pool (batch {batch} x {kv_heads} KV heads x held keys x head_dim "
                f"{head_dim})", "lower the batch or head_dim")
        for pool, count in zip(self.pools, slots, strict=True):
            self._grow(pool, count)

    # ---- what is held ----------------------------------------------------------------------------

    def held_keys(self, kv_head: int | None = None) -> int:
        """Keys held now per KV head (stored in a page not yet freed); ``None``: summed over KV heads."""
        return sum(pool.held_keys() * len(heads) for pool, heads in self._pools_of(kv_head))

    def peak_keys(self, kv_head: int | None = None) -> int:
        """The most keys held at once so far; ``None``: summed over KV heads."""
        return sum(pool.peak * len(heads) for pool, heads in self._pools_of(kv_head))

    def evicted_keys(self, kv_head: int | None = None) -> int:
        """Keys written so far that are held no more (evicted, or never stored because no later query
        reads them); ``None``: summed over KV heads."""
        return sum((self.length - pool.held_keys()) * len(heads) for pool, heads in self._pools_of(kv_head))

    @property
    def bytes(self) -> int:
        """Bytes allocated for keys and values (the pools' capacity)."""
        return sum(2 * pool.k.numel() * pool.k.element_size() for pool in self.pools)

    @property
    def held_bytes(self) -> int:
        """Bytes of the pages held now."""
        return sum(2 * self.batch * len(pool.kv_heads) * pool.held_pages() * self.page * self.head_dim
                   * self.dtype.itemsize for pool in self.pools)

    def _pools_of(self, kv_head: int | None) -> list[tuple[_Pool, list[int]]]:
        if kv_head is None:
            return [(pool, pool.kv_heads) for pool in self.pools]
        check_int(kv_head, "DecodeCache: kv_head", low=0, high=self.kv_heads - 1, error=KernelInputError)
        return [(pool, [kv_head]) for pool in self.pools if kv_head in pool.kv_heads]

    # ---- writing ---------------------------------------------------------------------------------

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write keys and values (B, Hkv, s, d) for positions ``[length, length + s)``, whose queries
        ``attend`` computes next (first evicting what no query from ``length`` on reads)."""
        self._write(k, v, next_query=self.length)

    def prefill(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write the keys and values (B, Hkv, s, d) of a prompt whose queries were computed elsewhere
        (a prefill through the block-sparse kernel): only what queries from ``length + s`` on read
        is kept."""
        self._write(k, v, next_query=self.length + k.shape[2] if isinstance(k, torch.Tensor) else 0)

    def _write(self, k: torch.Tensor, v: torch.Tensor, next_query: int) -> None:
        s = self._check_kv(k, v)
        if self.length + s > self.cp.n:
            raise KernelInputError(f"DecodeCache: {s} more tokens after {self.length:,} pass n = "
                                   f"{self.cp.n:,}, the length the pattern was compiled for")
        start = self.length
        new = np.arange(start, start + s)
        for pool in self.pools:
            pool.evict(next_query)
            if len(pool.slot_last) > pool.capacity and s < self.page:  # decoding again after a chunk
                self._compact(pool)
            kept = new[pool.last[new] >= next_query]  # keys some query still to come reads
            if len(kept) == 0:
                continue
            rows = pool.place(kept)
            if rows is None:  # a chunk holds more at once than one query: grow the pool
                self._grow(pool, len(pool.slot_last) + len(kept) // self.page + len(pool.open) + 1)
                rows = pool.place(kept)
            pool.positions[rows] = kept
            pool.peak = max(pool.peak, pool.held_keys())
            index = torch.from_numpy(rows).to(self.device)
            source = torch.from_numpy(kept - start).to(k.device)
            heads = torch.tensor(pool.kv_heads, device=k.device)
            for x, target in ((k, pool.k), (v, pool.v)):
                values = x.index_select(1, heads).index_select(2, source).to(self.device)  # (B, Hp, m, d)
                target.index_copy_(2, index, values)
        self.length += s
        self._pending_from = start if next_query == start else self.length

    def _compact(self, pool: _Pool) -> None:
        """Shrink ``pool`` to its decode capacity, moving its held pages to the front."""
        held = pool.compact()
        if held is None:
            return
        shape = (self.batch, len(pool.kv_heads), len(pool.slot_last) * self.page, self.head_dim)
        rows = torch.from_numpy((held[:, None] * self.page + np.arange(self.page)).ravel()).to(self.device)
        for name in ("k", "v"):
            fresh = torch.zeros(shape, dtype=self.dtype, device=self.device)
            fresh[:, :, :len(rows)] = getattr(pool, name).index_select(2, rows)
            setattr(pool, name, fresh)

    def _grow(self, pool: _Pool, slots: int) -> None:
        """Give ``pool`` room for ``slots`` pages: a quarter more than asked once it grows, so a run of
        chunks reallocates a few times, not once per chunk."""
        old = len(pool.slot_last)
        if old:
            slots = max(slots, old + old // 4)
        rows = (slots - old) * self.page
        shape = (self.batch, len(pool.kv_heads), rows, self.head_dim)  # (B, Hp, new rows, d)
        # zeros: a row no key was written to holds no NaN for an in-place attention to meet
        fresh = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(2)]
        pool.k, pool.v = fresh if pool.k is None else (torch.cat([pool.k, fresh[0]], 2),
                                                       torch.cat([pool.v, fresh[1]], 2))
        pool.slot_last = np.concatenate([pool.slot_last, np.full(slots - old, -1, np.int64)])
        pool.positions = np.concatenate([pool.positions, np.full(rows, -1, np.int64)])
        pool.free = list(range(slots - 1, old - 1, -1)) + pool.free  # the lowest slots are used first

    def select(self, rows: torch.Tensor) -> None:
        """Keep the batch rows ``rows`` (r,), in that order, repeats allowed (beam search's reorder,
        ``num_return_sequences``): the batch becomes ``r``."""
        if not isinstance(rows, torch.Tensor) or rows.dim() != 1 \
                or rows.dtype not in (torch.int32, torch.int64):
            raise KernelInputError(f"DecodeCache.select: rows must be a 1-d integer tensor, got "
                                   f"{brief(rows)}")
        if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < self.batch:
            raise KernelInputError(f"DecodeCache.select: rows must lie in [0, {self.batch}), got values from "
                                   f"{int(rows.min())} to {int(rows.max())}")
        index = rows.to(self.device)
        for pool in self.pools:
            pool.k, pool.v = pool.k.index_select(0, index), pool.v.index_select(0, index)
        self.batch = len(rows)

    # ---- attention -------------------------------------------------------------------------------

    def attend(self, q: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """(B, H, s, d): attention of the queries q (B, H, s, d) at positions ``[length - s, length)``,
        the newest of the last ``append``; a query with no allowed key gets 0."""
        self._check_q(q, scale)
        H, s = q.shape[1], q.shape[2]
        queries = np.arange(self.length - s, self.length)
        out = q.new_zeros(q.shape)
        for pool in self.pools:
            rows = np.flatnonzero(pool.positions >= 0)  # the pool rows that hold a key
            keys = pool.positions[rows]  # (R,) their positions, all before length
            for node, heads in pool.queries.items():
                allowed = np.broadcast_to(node.predicate(queries[:, None], keys[None, :]), (s, len(rows)))
                for kv_heads, q_heads in _calls(pool, heads, H // self.kv_heads):
                    o, has_key = self._attend_rows(pool, kv_heads, q[:, q_heads], rows, allowed, scale)
                    out[:, q_heads] = torch.where(has_key, o, 0.0)  # a row without keys: 0, not NaN
        return out

    def _attend_rows(self, pool: _Pool, kv_heads: list[int], q: torch.Tensor, rows: np.ndarray,
                     allowed: np.ndarray, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        """SDPA of q (B, G, s, d) over the pool rows ``rows`` that ``allowed`` (s, R) lets each query
        read: the whole pool in place under a mask when the queries read most of it, else the keys
        they read, gathered (a stride reads few of the many keys it keeps)."""
        local = [pool.kv_heads.index(g) for g in kv_heads]
        k, v = pool.k, pool.v
        if len(local) != len(pool.kv_heads):
            index = torch.tensor(local, device=self.device)
            k, v = k.index_select(1, index), v.index_select(1, index)
        read = allowed.any(axis=0)  # (R,)
        if read.sum() >= GATHER_BELOW * k.shape[2]:  # in place: (s, slots * page) over the whole pool
            mask = np.zeros((allowed.shape[0], k.shape[2]), bool)
            mask[:, rows] = allowed
        else:  # gathered: (B, Hp, r, d) of the keys read
            index = torch.from_numpy(rows[read]).to(self.device)
            k, v = k.index_select(2, index), v.index_select(2, index)
            mask = allowed[:, read]
        has_key = mask.any(axis=1)  # (s,)
        attn_mask = None
        if not mask.all():  # a row without keys is opened to all (a finite softmax), then zeroed
            attn_mask = torch.from_numpy(mask | ~has_key[:, None]).to(self.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale,
                                           enable_gqa=q.shape[1] != k.shape[1])  # (B, G, s, d)
        return o, torch.from_numpy(has_key).to(o.device)[:, None]

    # ---- checks ----------------------------------------------------------------------------------

    def _check_kv(self, k, v) -> int:
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor):
                raise KernelInputError(f"DecodeCache: {name} must be a torch.Tensor, got {type(x).__name__}")
        if k.dim() != 4 or k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != (
                self.batch, self.kv_heads, self.head_dim) or k.shape[2] < 1:
            raise KernelInputError(f"DecodeCache.append: k and v must both be (batch {self.batch}, "
                                   f"kv_heads {self.kv_heads}, s >= 1, head_dim {self.head_dim}), got "
                                   f"{tuple(k.shape)} and {tuple(v.shape)}")
        for name, x in (("k", k), ("v", v)):
            if x.dtype != self.dtype:
                raise KernelInputError(f"DecodeCache: {name} has dtype {dtype_name(x.dtype)} but the cache "
                                       f"holds {dtype_name(self.dtype)}")
        return k.shape[2]

    def _check_q(self, q, scale) -> None:
        if not isinstance(q, torch.Tensor) or q.dim() != 4:
            shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
            raise KernelInputError(f"DecodeCache.attend: q must be a 4-d tensor (batch, heads, queries, "
                                   f"head_dim), got {shape}")
        B, H, s, d = q.shape
        if (B, H, d) != (self.batch, self.cp.heads, self.head_dim) or s < 1 or s > self.length:
            raise KernelInputError(f"DecodeCache.attend: q must be (batch {self.batch}, heads "
                                   f"{self.cp.heads}, 1..{self.length} queries, head_dim {self.head_dim}), "
                                   f"got {tuple(q.shape)}")
        if q.dtype != self.dtype:
            raise KernelInputError(f"DecodeCache.attend: q has dtype {dtype_name(q.dtype)} but the cache "
                                   f"holds {dtype_name(self.dtype)}")
        if q.device != self.device and not (q.device.type == self.device.type == "cpu"):
            raise KernelInputError(f"DecodeCache.attend: q is on {q.device} but the cache is on "
                                   f"{self.device}")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not math.isfinite(scale)):
            raise KernelInputError(f"DecodeCache.attend: scale must be a finite number, got {brief(scale)}")
        if self.length - s < self._pending_from:
            raise KernelInputError(
                f"DecodeCache.attend: the queries [{self.length - s:,}, {self.length:,}) start before "
                f"{self._pending_from:,}, the first position of the last append: prefill() keeps only what "
                "later queries read, and an append evicts what earlier queries read, so attend computes "
                "(the newest of) the queries of the last append")


def _calls(pool: _Pool, heads: list[int], group: int) -> list[tuple[list[int], list[int]]]:
    """(KV heads, query heads) of the SDPA calls for the query heads ``heads`` of one bound pattern:
    one call when each of the pool's KV heads serves the same number of them (grouped-query
    attention lines them up), else one call per KV head."""
    by_kv: dict[int, list[int]] = {}
    for h in heads:
        by_kv.setdefault(h // group, []).append(h)
    if len({len(hs) for hs in by_kv.values()}) == 1:
        return [(list(by_kv), [h for hs in by_kv.values() for h in hs])]
    return [([g], hs) for g, hs in by_kv.items()]


def _decode_pages(last: np.ndarray, page: int) -> int:
    """The most pages held at once while tokens arrive one at a time, each key placed as
    ``_Pool.place`` does: with the keys of its class (last reader // page), ``page`` to a page, held
    from its first key's arrival to the last reader of its keys."""
    n = len(last)
    kept = np.flatnonzero(last >= 0)
    if len(kept) == 0:
        return 1
    classes = last[kept] // page
    order = np.argsort(classes, kind="stable")  # by class, then by arrival
    classes, keys = classes[order], kept[order]
    starts = np.flatnonzero(np.r_[True, classes[1:] != classes[:-1]])
    rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    pages = np.cumsum(np.r_[True, (classes[1:] != classes[:-1]) | (rank[1:] % page == 0)]) - 1
    first = np.full(pages[-1] + 1, n, np.int64)
    np.minimum.at(first, pages, keys)
    end = np.zeros(pages[-1] + 1, np.int64)
    np.maximum.at(end, pages, last[keys])
    change = np.zeros(n + 1, np.int64)
    np.add.at(change, first, 1)
    np.add.at(change, np.minimum(end + 1, n), -1)
    return max(1, int(np.cumsum(change).max()) + 1)  # + 1: the next page is written before the evictions


def reference_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cp: CompiledPattern, layer: int = 0,
                     scale: float | None = None) -> torch.Tensor:
    """The oracle: q (B, H, s, d), the last s of the positions ``[0, m)`` of k, v (B, Hkv, m, d),
    by SDPA with the pattern's dense mask at those rows (0 for a row without keys)."""
    s, m, H = q.shape[2], k.shape[2], q.shape[1]
    queries, keys = np.arange(m - s, m), np.arange(m)
    group = H // k.shape[1]
    out = q.new_zeros(q.shape)
    for h in range(H):
        node: Lowered = cp.node(layer, h)
        allowed = np.broadcast_to(node.predicate(queries[:, None], keys[None, :]), (s, m))
        allowed = torch.from_numpy(allowed.copy())
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
