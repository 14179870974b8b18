"""Block-sparse attention in plain torch, straight from our block CSR: the correctness oracle.

For each query block row it gathers the row's key blocks (FULL and PARTIAL), computes the scores
of a chunk of rows with one batched matmul, applies the token predicate only on PARTIAL blocks and
takes the softmax over the gathered keys. Rows are grouped by their number of stored blocks, so
every chunk is a dense ``(rows, bq, blocks * bk)`` problem without padding; chunks bound memory.
The predicate is evaluated once per distinct PARTIAL block content and cached per layout.

A query with no allowed key gets 0 (not SDPA's NaN): its softmax is all NaN and is zeroed, as
FlexAttention does. Only chunks with a row that has no FULL block can have such a query.

>>> cp = patternc.compile("causal & window(512)", n=4096, block=128)          # doctest: +SKIP
>>> out = block_sparse_attention(q, k, v, cp, layer=0)  # q, k, v: (B, H, 4096, d)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from patternc.lower.node import block_masks, distinct_blocks

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.lower.node import Lowered

__all__ = ["SCORE_BUDGET", "block_sparse_attention"]

SCORE_BUDGET = 1 << 24  # float32 scores held per chunk (64 MiB): bounds memory, keeps matmuls large


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cp: CompiledPattern,
                           layer: int = 0, scale: float | None = None,
                           score_budget: int = SCORE_BUDGET) -> torch.Tensor:
    """Attention of ``q, k, v`` (B, H, n, d) under layer ``layer`` of ``cp``: ``H == cp.heads``, or
    any ``H`` when the pattern has one head (its layout then applies to every head).

    Same scale as SDPA (``1 / sqrt(d)`` unless given). Softmax is accumulated in float32 whatever
    the input dtype; the output has ``q``'s dtype. Rows with no allowed key are 0.

    >>> block_sparse_attention(q, k, v, patternc.compile("causal", n=q.shape[2]))  # doctest: +SKIP
    """
    B, H, n, d = q.shape
    if (cp.heads != H and cp.heads != 1) or cp.n != n or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (B, {cp.heads}, {cp.n}, d) for this pattern; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    heads_of: dict[Lowered, list[int]] = {}  # heads sharing a bound pattern share one layout
    for h in range(cp.heads):
        heads_of.setdefault(cp.node(layer, h), []).append(h)
    # CPUs without bf16 matmul units run bf16 matmuls ~10x slower than float32: compute in float32
    work = torch.float32 if q.device.type == "cpu" else q.dtype
    if len(heads_of) == 1:  # one layout for every head: no gather or scatter of heads
        return _one_layout(q.to(work), k.to(work), v.to(work), cp, layer, 0, scale,
                           score_budget).to(q.dtype)
    out = torch.zeros(B, H, n, v.shape[-1], dtype=q.dtype, device=q.device)  # (B, H, n, dv)
    for heads in heads_of.values():
        hs = torch.tensor(heads, device=q.device)
        out[:, hs] = _one_layout(q[:, hs].to(work), k[:, hs].to(work), v[:, hs].to(work), cp, layer,
                                 heads[0], scale, score_budget).to(q.dtype)
    return out


def _padded(x: torch.Tensor, blocks: int, size: int) -> torch.Tensor:
    """(B, H, n, d) -> (B * H, blocks, size, d), zero-padded past n."""
    B, H, n, d = x.shape
    x = x.reshape(B * H, n, d)
    if blocks * size != n:
        x = torch.nn.functional.pad(x, (0, 0, 0, blocks * size - n))
    return x.view(B * H, blocks, size, d)


def _one_layout(q, k, v, cp, layer, head, scale, budget) -> torch.Tensor:
    """Attention for heads that share ``cp.block_layout(layer, head)``; inputs (B, Hg, n, d)."""
    B, Hg, n, _ = q.shape
    grid = cp.grid
    bq, bk = grid.bq, grid.bk
    indptr, indices, full = cp.layout(layer, head)
    dev = q.device
    qb = _padded(q * scale, grid.nbq, bq)  # (BH, nbq, bq, d); scaling q is cheaper than the scores
    kb = _padded(k, grid.nbk, bk)  # (BH, nbk, bk, d)
    vb = _padded(v, grid.nbk, bk)  # (BH, nbk, bk, dv)
    out = q.new_zeros(B * Hg, grid.nbq, bq, v.shape[-1])  # (BH, nbq, bq, dv)
    # keys past n (padding of the last key block) get -inf; a bias row per key block, only if needed
    key_bias = None
    if grid.nbk * bk != n:
        key_bias = torch.zeros(grid.nbk, bk, device=dev)
        key_bias.view(-1)[n:] = -math.inf
    kind, masks = _partial_masks(cp, layer, head, str(dev))
    counts = np.diff(indptr)
    for c in np.unique(counts[counts > 0]):
        rows = np.flatnonzero(counts == c)
        step = max(1, budget // (qb.shape[0] * bq * int(c) * bk))  # budget / scores of one block row
        for start in range(0, len(rows), step):
            r = rows[start:start + step]
            slots = indptr[r][:, None] + np.arange(c)  # (R, c) positions in the CSR
            cols = torch.from_numpy(indices[slots].astype(np.int64)).to(dev)  # (R, c)
            out[:, torch.from_numpy(r).to(dev)] = _chunk(
                qb[:, r], kb[:, cols], vb[:, cols], cols, full[slots], kind[slots], masks, key_bias)
    return out.view(B, Hg, -1, v.shape[-1])[:, :, :n]


@lru_cache(maxsize=16)
def _partial_masks(cp, layer, head, device) -> tuple[np.ndarray, torch.Tensor]:
    """Token masks of PARTIAL blocks, each distinct content once (a window's edge blocks all look
    alike): ``kind`` (nnz,) int64 index into ``masks`` (u, bq, bk) bool, -1 for FULL blocks.

    Cached per layout, so repeated calls (a benchmark, a model's layers) never re-evaluate it.
    """
    indptr, indices, full = cp.layout(layer, head)
    kind = np.full(len(indices), -1, np.int64)
    partial = np.flatnonzero(~full)
    if len(partial) == 0:
        return kind, torch.zeros(0, cp.grid.bq, cp.grid.bk, dtype=torch.bool, device=device)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))[partial]
    cols = indices[partial].astype(np.int64)
    node = cp.node(layer, head)
    first, inverse = distinct_blocks(node, cp.grid, rows, cols)
    kind[partial] = inverse
    masks = block_masks(node, cp.grid, rows[first], cols[first])  # (u, bq, bk), False past n
    return kind, torch.from_numpy(np.ascontiguousarray(masks)).to(device)


def _chunk(q, k, v, cols, full, kind, masks, key_bias) -> torch.Tensor:
    """One chunk of R query block rows with c key blocks each.

    q (BH, R, bq, d), already scaled; k (BH, R, c, bk, d); v (BH, R, c, bk, dv); cols (R, c);
    full and kind (R, c) numpy; masks (u, bq, bk) the distinct PARTIAL block masks.
    """
    BH, R, c, bk, d = k.shape
    bq = q.shape[2]
    k = k.reshape(BH, R, c * bk, d)  # (BH, R, c*bk, d)
    v = v.reshape(BH, R, c * bk, v.shape[-1])  # (BH, R, c*bk, dv)
    scores = torch.matmul(q, k.transpose(-1, -2)).float()  # (BH, R, bq, c*bk)
    if key_bias is not None:
        scores += key_bias[cols].view(1, R, 1, c * bk)
    if not full.all():
        # a bool mask shared by the BH heads (4x smaller than the scores), then one masked_fill
        pr, pc = (torch.from_numpy(a).to(q.device) for a in np.nonzero(~full))
        allowed = torch.ones(R, c, bq, bk, dtype=torch.bool, device=q.device)
        allowed[pr, pc] = masks[torch.from_numpy(kind[~full]).to(q.device)]  # (p, bq, bk) PARTIAL
        scores.masked_fill_(~allowed.transpose(1, 2).reshape(1, R, bq, c * bk), -math.inf)
    p = torch.softmax(scores, dim=-1)
    if not full.any(axis=1).all():  # a row without a FULL block may have no allowed key: NaN -> 0
        p = torch.nan_to_num_(p, nan=0.0)
    return torch.matmul(p.to(v.dtype), v)  # (BH, R, bq, dv)
