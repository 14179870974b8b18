"""Block-sparse attention in plain torch, straight from our block CSR, forward and backward.

Each query block row's stored blocks fall into runs of consecutive key blocks (``plan.segments``);
a run's keys lie contiguously in ``k``, so every call reads queries, keys and values as strided
views, never a copy, except a row's fixed-place runs (sinks, summary columns), whose keys are
gathered into one call (``Segment.gather``). Rows whose runs look alike share one call. A call
is computed by a path (``call_paths``: SDPA's fused CPU kernel, bfloat16 matmuls, or unfused
math), chosen by ``paths``. The token predicate enters only for runs with PARTIAL blocks. A row's
calls are merged through their log-sum-exp, into outputs of the working dtype.

The backward walks the same calls. It keeps only the inputs, the output and the log-sum-exp
(O(n d) beyond the inputs, never the scores): each call recomputes its scores and, given the
row's combined output and log-sum-exp, yields exactly its share of the gradients; dq sums over a
row's calls, dk and dv over every row that reads a key (float32 sums; float64 for float64).

Grouped-query attention: k and v may have fewer heads than q; query head ``h`` reads KV head
``h // (Hq // Hkv)``, as SDPA's ``enable_gqa`` groups them, and dk, dv sum over the group.

A query with no allowed key gets 0 and zero gradients (not SDPA's NaN), as FlexAttention does.
A key the pattern masks for a row has no effect on that row, whatever its value, nor the row on
it: calls with PARTIAL blocks whose keys or values (backward: also queries, outputs or output
gradients) hold a NaN or inf are computed by the ``math`` path, which selects instead of adding
-inf; other calls are untouched.

A layer that is dense causal in every head (``causal``, or any expression that simplifies to it)
is run by SDPA's fused causal kernel when no gradient is needed and its keys and values are finite:
the same numbers, at dense attention's own speed, which is what a deployment runs for such a layer
(and what ``patternc.measure`` should time). With gradients it takes the block path, whose backward
keeps the masked-key guarantees above.

>>> import torch
>>> import torch.nn.functional as F
>>> cp = patternc.compile("causal & window(128)", n=512, block=64)
>>> gen = torch.Generator().manual_seed(0)  # q, k, v: (B, H, n, d)
>>> q, k, v = (torch.randn(1, 2, 512, 16, generator=gen, requires_grad=True) for _ in range(3))
>>> out = block_sparse_attention(q, k, v, cp, layer=0)  # (B, H, n, d)
>>> out.sum().backward()
>>> mask = torch.from_numpy(cp.to_dense(layer=0))  # (H, n, n) bool: the oracle, small n only
>>> x = [t.detach().requires_grad_() for t in (q, k, v)]
>>> F.scaled_dot_product_attention(*x, attn_mask=mask).sum().backward()
>>> [torch.allclose(ours.grad, dense.grad, atol=1e-5) for ours, dense in zip((q, k, v), x)]
[True, True, True]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from patternc.kernels.call_paths import FLOOR, PATHS, accumulator
from patternc.kernels.inputs import Shapes, check_inputs
from patternc.kernels.masks import CallMask, MaskCache, mask_cache
from patternc.kernels.paths import KernelPaths, resolve_paths
from patternc.kernels.plan import Plan, segments
from patternc.primitives.offsets import Band

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.lower.grid import Grid

__all__ = ["SCORE_BUDGET", "block_sparse_attention", "is_dense_causal"]

# scores of one call, as if materialised: SDPA's fused kernel holds none (its forward calls are as
# large as this allows: each call costs a kernel launch and a log-sum-exp merge, which on a shared
# machine's busy cores cost more than their work); the paths that do hold them cap it lower
SCORE_BUDGET = 1 << 30
BACKWARD_SCORES = 1 << 20  # a backward call's gradients then stay within a few MiB (in cache)

Tensor = torch.Tensor


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, cp: CompiledPattern, layer: int = 0,
                           scale: float | None = None, score_budget: int = SCORE_BUDGET,
                           path: str | None = None) -> Tensor:
    """Attention of ``q`` (B, H, n, d) over ``k``, ``v`` (B, Hkv, n, d) under layer ``layer`` of
    ``cp``, differentiable in all three. ``H == cp.heads``, or any ``H`` when the pattern has one
    head (its layout then applies to every head); ``H`` a multiple of ``Hkv`` (grouped-query).

    Same scale as SDPA (``1 / sqrt(d)`` unless given). Softmax and log-sum-exp are float32 whatever
    the input dtype (float64 for float64); the output has ``q``'s dtype. Rows with no allowed key
    are 0. ``score_budget`` bounds the scores of one call (rows x keys x batch x heads), as if they
    were materialised. ``path`` (``auto``, ``fused``, ``bf16``, ``math``; default
    ``$PATTERNC_KERNEL_PATH``, else ``auto``) says how calls are computed: see ``kernels.paths``.
    Bad inputs raise ``KernelInputError`` before any work.

    Grouped-query heads: 4 query heads over 2 KV heads.

    >>> import torch
    >>> import torch.nn.functional as F
    >>> cp = patternc.compile("causal & window(32)", n=128, block=32)
    >>> gen = torch.Generator().manual_seed(0)
    >>> q = torch.randn(1, 4, 128, 16, generator=gen, requires_grad=True)  # (B, H, n, d)
    >>> k, v = (torch.randn(1, 2, 128, 16, generator=gen, requires_grad=True) for _ in range(2))  # Hkv = 2
    >>> out = block_sparse_attention(q, k, v, cp)
    >>> out.sum().backward()  # dk, dv sum over the two query heads of each KV head
    >>> out.shape, k.grad.shape
    (torch.Size([1, 4, 128, 16]), torch.Size([1, 2, 128, 16]))
    >>> dense = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.from_numpy(cp.to_dense(layer=0)),
    ...                                        enable_gqa=True)
    >>> torch.allclose(out, dense, atol=1e-5)
    True
    >>> block_sparse_attention(q, k, v, patternc.compile("causal", n=256))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    patternc.errors.KernelInputError: ...: q has length 128 but the pattern was compiled for n = 256
    """
    shapes = check_inputs(q, k, v, cp, layer, scale, score_budget)
    run = _Run(cp=cp, layer=layer, scale=1.0 / math.sqrt(shapes.head_dim) if scale is None else float(scale),
               budget=score_budget, paths=resolve_paths(path, q.dtype, q.device, shapes.head_dim),
               shapes=shapes)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _Attention.apply(q, k, v, run)
    if _dense_causal(run):
        work = run.paths.forward_work
        out = F.scaled_dot_product_attention(q.to(work), k.to(work), v.to(work), is_causal=True,
                                             scale=run.scale, enable_gqa=run.shapes.group > 1)
        # a NaN or inf in a future key or value reaches earlier rows of its tile through a zero weight
        # (0 * NaN), so a finite output is the exact one; anything else takes the block walk, which
        # keeps masked keys inert. One reduction over the output, not four passes over k and v: on a
        # busy machine every parallel op can wait a scheduler slice (40 ms against 70 of SDPA at 4k)
        if bool(torch.isfinite(out.sum())):
            return out.to(q.dtype)
    return _forward(q, k, v, run)[0]


def _dense_causal(run: _Run) -> bool:
    """A dense causal layer, on a path that is SDPA's fused kernel anyway."""
    return run.paths.forward in ("fused", "fused_fp32") and is_dense_causal(run.cp, run.layer)


def is_dense_causal(cp: CompiledPattern, layer: int) -> bool:
    """Every head of the layer allows exactly ``k <= q`` (its pattern lowers to ``causal``'s band).

    >>> is_dense_causal(patternc.compile("causal | (causal & window(8))", n=64), 0)
    True
    """
    nodes = (cp.node(layer, h) for h in range(cp.heads))
    return all(isinstance(node, Band) and node.is_causal(cp.n) for node in nodes)


@dataclass(frozen=True, slots=True)
class _Run:
    """Everything one kernel call needs besides its tensors."""

    cp: CompiledPattern
    layer: int
    scale: float
    budget: int
    paths: KernelPaths
    shapes: Shapes


class _Attention(torch.autograd.Function):
    """The kernel as an autograd op: saves q, k, v, the output and the log-sum-exp (B, H, n)."""

    @staticmethod
    def forward(ctx, q, k, v, run: _Run):
        out, lse = _forward(q, k, v, run)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.run = run
        return out

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would be silently 0
            raise RuntimeError("block_sparse_attention has first derivatives only: differentiating "
                               "its gradients (create_graph=True, double backward) is not supported")
        q, k, v, out, lse = ctx.saved_tensors
        return (*_backward(grad, q, k, v, out, lse, ctx.run, tuple(ctx.needs_input_grad[:3])), None)


# ---- heads: which share a layout, which KV head each reads -----------------------------------------

def _head_groups(run: _Run) -> list[tuple[int, Tensor | None]]:
    """``(a head of the group, its query heads)`` per distinct layout; None: every head, in order."""
    cp, heads = run.cp, run.shapes.heads
    if cp.heads == 1:
        return [(0, None)]
    heads_of: dict[object, list[int]] = {}  # heads sharing a bound pattern share one layout
    for h in range(heads):
        heads_of.setdefault(cp.node(run.layer, h), []).append(h)
    if len(heads_of) == 1:
        return [(0, None)]
    return [(hs[0], torch.tensor(hs)) for hs in heads_of.values()]


def _kv_heads(heads: Tensor | None, shapes: Shapes) -> Tensor | None:
    """The KV head each of ``heads`` reads; None when that is every KV head, in order."""
    if shapes.group == 1:
        return heads
    return (torch.arange(shapes.heads) if heads is None else heads) // shapes.group


def _pick(x: Tensor, heads: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Heads ``heads`` of x (B, H, n, *), in ``dtype``; no copy when nothing changes."""
    return (x if heads is None else x.index_select(1, heads.to(x.device))).to(dtype)


def _forward(q, k, v, run: _Run) -> tuple[Tensor, Tensor]:
    """Output (B, H, n, d) in q's dtype and log-sum-exp (B, H, n), accumulator dtype."""
    work = run.paths.forward_work
    out = lse = None
    for head, heads in _head_groups(run):
        kv = _kv_heads(heads, run.shapes)
        o, l = _layout_forward(_pick(q, heads, work), _pick(k, kv, work), _pick(v, kv, work), run, head)
        if heads is None:
            return o.to(q.dtype), l
        if out is None:
            out = q.new_zeros(q.shape)  # (B, H, n, d)
            lse = l.new_empty(q.shape[:3])  # (B, H, n)
        out[:, heads] = o.to(q.dtype)
        lse[:, heads] = l
    return out, lse


def _backward(grad, q, k, v, out, lse, run: _Run, needs: tuple[bool, bool, bool]):
    """(dq, dk, dv) in the inputs' dtypes, None where ``needs`` says no."""
    work = run.paths.backward_work
    acc = accumulator(work)
    dq = dk = dv = None
    for head, heads in _head_groups(run):
        kv = _kv_heads(heads, run.shapes)
        gq, gk, gv = _layout_backward(_pick(grad, heads, work), _pick(q, heads, work), _pick(k, kv, work),
                                      _pick(v, kv, work), _pick(out, heads, work), _pick(lse, heads, acc),
                                      run, head, needs)
        dq = _gather(dq, heads, gq, q.shape)
        dk = _gather(dk, kv, gk, k.shape)
        dv = _gather(dv, kv, gv, v.shape)
    return tuple(None if g is None else g.to(x.dtype) for g, x in ((dq, q), (dk, k), (dv, v)))


def _gather(total: Tensor | None, heads: Tensor | None, part: Tensor | None, shape) -> Tensor | None:
    """Add a group's gradient ``part`` (B, Hg, n, d) into ``total`` (B, *shape[1:]) at ``heads``
    (repeated heads sum: the query heads of one KV head); ``heads`` None: ``part`` is all of it."""
    if part is None:
        return None
    if heads is None:
        return part
    if total is None:
        total = part.new_zeros(shape)
    return total.index_add_(1, heads.to(part.device), part)


# ---- one layout: the walk over the plan's calls ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Windows:
    """``rows`` windows of ``length`` tokens, the r-th at token ``start + r * step``: a call's
    queries or keys, viewed in place (``step`` 0 repeats one window)."""

    start: int
    step: int
    rows: int
    length: int

    def view(self, x: Tensor) -> Tensor:
        """(BH, n[, d]) -> (BH, rows, length[, d]), no copy."""
        n = x.shape[1]
        tail = x.shape[2:]
        inner = math.prod(tail)  # elements per token
        return x.as_strided((x.shape[0], self.rows, self.length, *tail),
                            (n * inner, self.step * inner, inner, *x.stride()[2:]),
                            x.storage_offset() + self.start * inner)

    def add(self, total: Tensor, part: Tensor) -> None:
        """``total`` (BH, n, d) += ``part`` (BH, rows, length, d) at these windows, which may
        overlap (a band's rows share keys): in slices of ``step`` tokens, each a view without
        overlap."""
        if self.rows == 1 or self.step >= self.length:
            self.view(total).add_(part)
        elif self.step == 0:
            self.view(total)[:, 0].add_(part.sum(1))
        else:
            for offset in range(0, self.length, self.step):
                piece = part[:, :, offset:offset + self.step]
                _Windows(self.start + offset, self.step, self.rows, piece.shape[2]).view(total).add_(piece)


@dataclass(frozen=True, slots=True)
class _Call:
    queries: _Windows
    keys: _Windows  # windows of ``read(k)``
    mask: CallMask
    fresh: bool  # no earlier call writes these rows: store instead of merge
    index: Tensor | None = None  # (K,) the key tokens a gathered call copies; None: read in place

    def read(self, x: Tensor) -> Tensor:
        """What ``keys`` windows: ``x`` (BH, n, *) itself, or the gathered tokens (BH, K, *)."""
        return x if self.index is None else x.index_select(1, self.index)

    def add_keys(self, total: Tensor, part: Tensor) -> None:
        """``total`` (BH, n, d) += a key gradient ``part`` (BH, R, K, d) at the keys it belongs to."""
        if self.index is None:
            self.keys.add(total, part)
        else:  # every row of a gathered call reads the same keys (k_step 0)
            total.index_add_(1, self.index, part.sum(1).to(total.dtype))


def _calls(plan: Plan, grid: Grid, bh: int, budget: int, masks: MaskCache) -> Iterator[_Call]:
    """The plan's segments cut into calls of at most ``budget`` scores."""
    for seg in plan.segments:
        # rows that read the same keys (a sink) and follow each other fold into one long query
        # run: SDPA's CPU kernel tiles 128 queries in 32s but a long run in 256s
        fold = seg.k_step == 0 and seg.row_step == 1 and seg.q_len == grid.bq
        per_call = max(1, budget // (bh * seg.q_len * seg.k_len))
        for first in range(0, seg.rows, per_call):
            rows = min(per_call, seg.rows - first)
            gathered = seg.gather is not None
            mask = masks.get(seg.kinds, seg.q_len, seg.k_len, rows if fold else 1, gathered)
            q0 = (seg.row0 + first * seg.row_step) * grid.bq  # first query token of the call
            k0 = 0 if gathered else seg.k_start + first * seg.k_step + mask.k_skip
            queries = (_Windows(q0, 0, 1, rows * seg.q_len) if fold
                       else _Windows(q0, seg.row_step * grid.bq, rows, seg.q_len))
            keys = _Windows(k0, seg.k_step, 1 if fold else rows, mask.k_len)
            index = masks.gather_index(seg.gather, seg.kinds, seg.q_len) if gathered else None
            yield _Call(queries, keys, mask, seg.fresh, index)


def _nonfinite_tokens(*xs: Tensor) -> Tensor | None:
    """(BH, n) True where a token of any of ``xs`` (BH, n, d) holds a NaN or inf; None if none does
    (a sum is the cheap first test: it is non-finite whenever an element is)."""
    if all(bool(torch.isfinite(x.sum())) for x in xs):
        return None
    bad = torch.stack([~torch.isfinite(x).all(-1) for x in xs]).any(0)
    return bad if bool(bad.any()) else None


def _path_of(call: _Call, chosen: str, bad_keys: Tensor | None, bad_queries: Tensor | None = None) -> str:
    """``chosen``, or ``math`` where a masked pair could carry a non-finite value."""
    if call.mask.allowed is None:
        return chosen  # every pair of the call is allowed: nothing to keep inert
    if bad_keys is not None and bool(call.keys.view(call.read(bad_keys)).any()):
        return "math"
    if bad_queries is not None and bool(call.queries.view(bad_queries).any()):
        return "math"
    return chosen


def _budget(run: _Run, path: str, backward: bool) -> int:
    """Scores per call: the caller's bound, lowered to what keeps a call's working set in cache
    where that pays (the backward's calls hold their gradients, the ``bf16`` path its scores)."""
    cap = PATHS[path].call_scores
    if backward:
        cap = min(cap, BACKWARD_SCORES)
    return min(run.budget, cap)


def _flat(*xs: Tensor) -> list[Tensor]:
    """(B, Hg, n, *) -> (B * Hg, n, *) contiguous."""
    return [x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]).contiguous() for x in xs]


def _layout_forward(q, k, v, run: _Run, head: int) -> tuple[Tensor, Tensor]:
    """Attention for heads that share ``cp.layout(layer, head)``; inputs (B, Hg, n, d)."""
    B, Hg, n, d = q.shape
    grid = run.cp.grid
    xq, xk, xv = _flat(q, k, v)  # (BH, n, d)
    budget = _budget(run, run.paths.forward, backward=False)
    plan = segments(run.cp, run.layer, head, max(1, budget // (B * Hg * grid.bq * grid.bk)))
    # running outputs (in the work dtype: a bfloat16 result is not copied or converted) and their
    # log-sum-exp; only rows that no call stores whole need a start value
    out = xq.new_empty(B * Hg, n, d)  # (BH, n, d)
    lse = xq.new_empty(B * Hg, n, dtype=accumulator(q.dtype))  # (BH, n)
    for start, end in plan.unstored:
        out[:, start:end] = 0.0
        lse[:, start:end] = FLOOR
    bad_keys = _nonfinite_tokens(xk, xv)
    masks = mask_cache(run.cp, run.layer, head, q.device, q.dtype)
    for call in _calls(plan, grid, B * Hg, budget, masks):
        path = PATHS[_path_of(call, run.paths.forward, bad_keys)]
        # o (BH, R, q, d), l (BH, R, q): R rows (1 when folded) of q queries each
        qs, ks = call.queries, call.keys
        o, l = path.forward(qs.view(xq), ks.view(call.read(xk)), ks.view(call.read(xv)), call.mask, run.scale)
        if call.mask.dead is not None:  # these queries' lse is 0 or NaN: they must weigh nothing
            o[:, :, call.mask.dead] = 0.0
            l[:, :, call.mask.dead] = FLOOR
        _store_or_merge(qs.view(out), qs.view(lse), o, l, call.fresh)
    return out.view(B, Hg, n, d), lse.view(B, Hg, n)


def _layout_backward(grad, q, k, v, out, lse, run: _Run, head: int, needs):
    """Gradient sums (B, Hg, n, d) for heads that share one layout; None where not needed."""
    B, Hg, n, d = q.shape
    grid = run.cp.grid
    xg, xq, xk, xv, xo = _flat(grad, q, k, v, out)  # (BH, n, d)
    xl = lse.reshape(B * Hg, n)
    budget = _budget(run, run.paths.backward, backward=True)
    plan = segments(run.cp, run.layer, head, max(1, budget // (B * Hg * grid.bq * grid.bk)))
    acc = accumulator(q.dtype)
    dq, dk, dv = (xq.new_zeros(xq.shape, dtype=acc) if need else None for need in needs)
    # a row whose output is NaN (it read a NaN) has a NaN log-sum-exp: in a fused call it would
    # reach the keys it may not read as well
    bad_keys, bad_queries = _nonfinite_tokens(xk, xv), _nonfinite_tokens(xq, xg, xo)
    masks = mask_cache(run.cp, run.layer, head, q.device, q.dtype)
    for call in _calls(plan, grid, B * Hg, budget, masks):
        path = PATHS[_path_of(call, run.paths.backward, bad_keys, bad_queries)]
        qs, ks = call.queries, call.keys
        gq, gk, gv = path.backward(qs.view(xg), qs.view(xq), ks.view(call.read(xk)), ks.view(call.read(xv)),
                                   qs.view(xo), qs.view(xl), call.mask, run.scale, needs)
        if dq is not None:
            qs.view(dq).add_(gq)
        if dk is not None:
            call.add_keys(dk, gk)
        if dv is not None:
            call.add_keys(dv, gv)
    return tuple(None if g is None else g.view(B, Hg, n, d) for g in (dq, dk, dv))


def _store_or_merge(out: Tensor, lse: Tensor, o: Tensor, l: Tensor, fresh: bool) -> None:
    """Fold a call's (o, l) into the running (out, lse) of its rows, in place."""
    if fresh:
        out.copy_(o)
        lse.copy_(l)
        return
    # the weights exp(lse - new) and exp(l - new) sum to 1: one lerp pass over the outputs
    weight = torch.sigmoid(l - lse).unsqueeze(-1)  # (BH, R, q, 1) = exp(l - logaddexp(lse, l))
    out.lerp_(o.to(out.dtype), weight.to(out.dtype))
    torch.logaddexp(lse, l, out=lse)
