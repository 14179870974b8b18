"""Block-sparse attention in plain torch, straight from our block CSR: the correctness oracle.

Each query block row's stored blocks fall into runs of consecutive key blocks (``plan.segments``);
a run's keys lie contiguously in ``k``, so every call reads queries, keys and values as strided
views, never a copy. Rows whose runs look alike share one call. On CPU the call is SDPA's fused
flash kernel (which also returns the log-sum-exp); elsewhere scores, softmax and values in
float32. The token predicate enters as an additive mask, only for runs with PARTIAL blocks, one
``(q_len, k_len)`` mask shared by all rows and heads of the call. A row's calls are merged
through their log-sum-exp (float32), into outputs of the working dtype.

A query with no allowed key gets 0 (not SDPA's NaN), as FlexAttention does.

>>> cp = patternc.compile("causal & window(512)", n=4096, block=128)          # doctest: +SKIP
>>> out = block_sparse_attention(q, k, v, cp, layer=0)  # q, k, v: (B, H, 4096, d)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch

from patternc.kernels.plan import partial_kinds, segments

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.lower.node import Lowered

__all__ = ["SCORE_BUDGET", "attend_math", "block_sparse_attention"]

SCORE_BUDGET = 1 << 24  # scores one call would hold if materialised (64 MiB of float32)
# log-sum-exp of a query with no allowed key yet: finite, so merging two such rows gives no NaN,
# and exp(FLOOR - lse) is exactly 0 against any real row
FLOOR = -1e30


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cp: CompiledPattern,
                           layer: int = 0, scale: float | None = None,
                           score_budget: int = SCORE_BUDGET) -> torch.Tensor:
    """Attention of ``q, k, v`` (B, H, n, d) under layer ``layer`` of ``cp``: ``H == cp.heads``, or
    any ``H`` when the pattern has one head (its layout then applies to every head).

    Same scale as SDPA (``1 / sqrt(d)`` unless given). Softmax and log-sum-exp are float32 whatever
    the input dtype; the output has ``q``'s dtype. Rows with no allowed key are 0. ``score_budget``
    bounds the scores of one call (rows x keys x batch x heads), as if they were materialised.

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
    # On CPU, SDPA's flash kernel runs bfloat16 as fast as float32 (it accumulates in float32), so
    # bfloat16 is kept and not copied; float16 runs ~3x slower there, so it is computed in float32
    work = torch.float32 if q.device.type == "cpu" and q.dtype != torch.bfloat16 else q.dtype
    if len(heads_of) == 1:  # one layout for every head: no gather or scatter of heads
        return _one_layout(q.to(work), k.to(work), v.to(work), cp, layer, 0, scale,
                           score_budget).to(q.dtype)
    out = torch.zeros(B, H, n, v.shape[-1], dtype=q.dtype, device=q.device)  # (B, H, n, dv)
    for heads in heads_of.values():
        hs = torch.tensor(heads, device=q.device)
        out[:, hs] = _one_layout(q[:, hs].to(work), k[:, hs].to(work), v[:, hs].to(work), cp, layer,
                                 heads[0], scale, score_budget).to(q.dtype)
    return out


def _one_layout(q, k, v, cp, layer, head, scale, budget) -> torch.Tensor:
    """Attention for heads that share ``cp.block_layout(layer, head)``; inputs (B, Hg, n, d)."""
    B, Hg, n, _ = q.shape
    dv = v.shape[-1]
    BH = B * Hg
    grid = cp.grid
    xq, xk, xv = (x.reshape(BH, n, x.shape[-1]).contiguous() for x in (q, k, v))  # (BH, n, d|dv)
    plan = segments(cp, layer, head, max(1, budget // (BH * grid.bq * grid.bk)))
    # running outputs (in the work dtype: a bfloat16 result is not copied or converted) and their
    # log-sum-exp (float32); only rows that no call stores whole need a start value
    out = q.new_empty(BH, n, dv)  # (BH, n, dv)
    lse = q.new_empty(BH, n, dtype=torch.float32)  # (BH, n)
    for start, end in plan.unstored:
        out[:, start:end] = 0.0
        lse[:, start:end] = FLOOR
    attend = _attend_flash if q.device.type == "cpu" else attend_math
    masks = _MaskCache(cp, layer, head, q.device, q.dtype)
    for seg in plan.segments:
        # rows that read the same keys (a sink) and follow each other fold into one long query
        # run: SDPA's CPU kernel tiles 128 queries in 32s but a long run in 256s
        fold = seg.k_step == 0 and seg.row_step == 1 and seg.q_len == grid.bq
        per_call = max(1, budget // (BH * seg.q_len * seg.k_len))
        for first in range(0, seg.rows, per_call):
            rows = min(per_call, seg.rows - first)
            m = masks.get(seg.kinds, seg.q_len, seg.k_len, rows if fold else 1)
            q0 = (seg.row0 + first * seg.row_step) * grid.bq  # first query token of the call
            k0 = seg.k_start + first * seg.k_step + m.k_skip
            qs = (q0, 0, 1, rows * seg.q_len) if fold else (q0, seg.row_step * grid.bq, rows, seg.q_len)
            ks = (k0, seg.k_step, 1 if fold else rows, m.k_len)
            # o (BH, R, q, dv), l (BH, R, q): R rows (1 when folded) of q queries each
            o, l = attend(_rows(xq, *qs), _rows(xk, *ks), _rows(xv, *ks), m.mask, scale)
            if m.dead is not None:  # SDPA gives these queries lse 0 (or NaN): they must weigh nothing
                o[:, :, m.dead] = 0.0
                l[:, :, m.dead] = FLOOR
            _store_or_merge(_rows(out, *qs), _rows(lse, *qs), o, l, seg.fresh)
    return out.view(B, Hg, n, dv)


def _rows(x: torch.Tensor, start: int, step: int, rows: int, length: int) -> torch.Tensor:
    """View of ``rows`` windows of ``length`` tokens of ``x`` (BH, n[, d]), the r-th at token
    ``start + r * step``: (BH, rows, length[, d]); ``step`` 0 repeats one window, no copy."""
    n = x.shape[1]
    tail = x.shape[2:]
    inner = math.prod(tail)  # elements per token
    return x.as_strided((x.shape[0], rows, length, *tail), (n * inner, step * inner, inner, *x.stride()[2:]),
                        x.storage_offset() + start * inner)


def _store_or_merge(out: torch.Tensor, lse: torch.Tensor, o: torch.Tensor, l: torch.Tensor,
                    fresh: bool) -> None:
    """Fold a call's (o, l) into the running (out, lse) of its rows, in place."""
    if fresh:
        out.copy_(o)
        lse.copy_(l)
        return
    # the weights exp(lse - new) and exp(l - new) sum to 1: one lerp pass over the outputs
    weight = torch.sigmoid(l - lse).unsqueeze(-1)  # (BH, R, q, 1) = exp(l - logaddexp(lse, l))
    out.lerp_(o, weight.to(out.dtype))
    torch.logaddexp(lse, l, out=lse)


def _attend_flash(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's fused CPU kernel: (BH, R, q, d) x (BH, R, k, d) -> out (BH, R, q, dv), lse (BH, R, q)."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    out, lse = flash(q, k, v, attn_mask=mask, scale=scale)
    return out, lse


def attend_math(q, k, v, mask, scale) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfused attention with its log-sum-exp, float32 softmax; any device, any dtype.

    (BH, R, q, d) x (BH, R, k, d) -> out (BH, R, q, dv) in v's dtype, lse (BH, R, q) float32; a query
    whose mask row is all -inf gets NaN, which the caller zeroes.

    >>> o, l = attend_math(q, k, v, None, 0.125)  # doctest: +SKIP
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # (BH, R, q, k)
    if mask is not None:
        scores += mask
    lse = torch.logsumexp(scores, dim=-1)  # (BH, R, q)
    p = torch.exp(scores - lse.unsqueeze(-1))
    return torch.matmul(p.to(v.dtype), v), lse


@dataclass(frozen=True, slots=True)
class _Mask:
    """What a run's content asks of its call: keys ``[k_skip, k_skip + k_len)`` of the run, the
    additive mask on them (None when all are allowed) and the queries with no allowed key."""

    mask: torch.Tensor | None  # (tiles * q_len, k_len): 0 allowed, -inf not
    dead: torch.Tensor | None  # (m,) query positions, or None
    k_skip: int
    k_len: int


class _MaskCache:
    """Each distinct run content's ``_Mask``, built once per call of the kernel. Key columns that
    no query may see are cut off (``sink(64)`` in a block of 128 reads 64 keys, unmasked);
    ``tiles`` rows folded into one query run repeat the mask."""

    def __init__(self, cp, layer, head, device, dtype) -> None:
        self.kind_masks = _device_masks(cp, layer, head, str(device))  # (u, bq, bk) bool
        self.dtype = dtype
        self.built: dict[tuple, _Mask] = {}

    def get(self, kinds: tuple[int, ...] | None, q_len: int, k_len: int, tiles: int) -> _Mask:
        if kinds is None:
            return _Mask(None, None, 0, k_len)
        key = (kinds, q_len, k_len, tiles)
        if key not in self.built:
            self.built[key] = self._build(kinds, q_len, k_len, tiles)
        return self.built[key]

    def _build(self, kinds, q_len, k_len, tiles) -> _Mask:
        ids = torch.tensor(kinds, device=self.kind_masks.device)  # (c,)
        allowed = self.kind_masks[ids.clamp(min=0)]  # (c, bq, bk)
        allowed[ids < 0] = True
        allowed = allowed.transpose(0, 1).reshape(allowed.shape[1], -1)[:q_len, :k_len]  # (q_len, k_len)
        seen = torch.nonzero(allowed.any(0)).flatten()  # never empty: a PARTIAL block allows a pair
        skip, end = int(seen[0]), int(seen[-1]) + 1
        allowed = allowed[:, skip:end]
        if bool(allowed.all()):
            return _Mask(None, None, skip, end - skip)
        allowed = allowed.repeat(tiles, 1)  # (tiles * q_len, k_len)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        mask.masked_fill_(~allowed, -math.inf)
        dead = torch.nonzero(~allowed.any(-1)).flatten()
        return _Mask(mask, dead if len(dead) else None, skip, end - skip)


@lru_cache(maxsize=16)
def _device_masks(cp, layer, head, device: str) -> torch.Tensor:
    """``plan.partial_kinds``' distinct block masks on ``device``, cached per layout."""
    return torch.from_numpy(partial_kinds(cp, layer, head)[1]).to(device)
