"""One call of the block-sparse kernel, forward and backward, computed three ways ("paths").

A call reads R query rows against their keys through strided views: q (BH, R, Lq, d), k and v
(BH, R, Lk, d). Its forward returns the call's output and log-sum-exp (float32; float64 for
float64). Its backward takes the ROW's combined output and log-sum-exp, every call of the row
merged: with those, the softmax it recomputes is the row's own, restricted to the call's keys, so
the call's gradients are exactly its share of the row's (ring attention splits a row's keys the
same way). The caller sums dq over a row's calls and dk, dv over every row that reads a key.

- ``fused``: SDPA's fused CPU flash kernel and its backward (CPU only; float32, float64, bfloat16);
  ``fused_fp32`` runs it on float32 copies of bfloat16 or float16 inputs.
- ``bf16``: bfloat16 matmuls for scores and values, float32 softmax and probabilities; wins where
  bfloat16 matmuls are much faster than the fused kernel (chosen by measurement, ``paths``).
- ``math``: unfused, every step in float32 (float64 kept); any device. It masks by selecting, never by
  adding -inf (NaN + -inf is NaN), and keeps masked pairs out of every product (0 * NaN is NaN),
  so a masked key's NaN or inf reaches no row. The kernel sends it the calls with PARTIAL blocks
  whose inputs hold such values; the other paths never see a non-finite value they could leak.

A query with no allowed key in a call gets NaN or an arbitrary log-sum-exp here: the caller sets
it to nothing (output 0, log-sum-exp ``FLOOR``) from ``CallMask.dead``.

>>> import torch
>>> gen = torch.Generator().manual_seed(0)
>>> q, k, v = (torch.randn(4, 2, 32, 16, generator=gen) for _ in range(3))  # (BH, R, L, d): 2 rows
>>> every_key = CallMask(allowed=None, additive=None, dead=None, k_skip=0, k_len=32)
>>> o, lse = PATHS["math"].forward(q, k, v, every_key, scale=0.25)  # (BH, R, Lq, d), (BH, R, Lq)
>>> scores = q @ k.transpose(-1, -2) * 0.25  # (BH, R, Lq, Lk)
>>> torch.allclose(o, scores.softmax(-1) @ v, atol=1e-6), torch.allclose(lse, scores.logsumexp(-1))
(True, True)
>>> fused = PATHS["fused"].forward(q, k, v, every_key, scale=0.25)
>>> [torch.allclose(ours, theirs, atol=1e-5) for ours, theirs in zip((o, lse), fused)]
[True, True]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from patternc.kernels.masks import CallMask

__all__ = ["FLOOR", "PATHS", "Path", "accumulator", "inert_matmul"]

# log-sum-exp of a query with no allowed key yet: finite, so merging two such rows gives no NaN,
# and exp(FLOOR - lse) is exactly 0 against any real row
FLOOR = -1e30

Tensor = torch.Tensor
Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


@dataclass(frozen=True, slots=True)
class Path:
    """How one call is computed: ``forward(q, k, v, mask, scale) -> (out, lse)`` and
    ``backward(grad, q, k, v, out, lse, mask, scale, needs) -> (dq, dk, dv)``, where ``needs`` says
    which of the three to compute (None for the others; ``fused`` computes all three anyway)."""

    name: str
    forward: Callable[[Tensor, Tensor, Tensor, CallMask, float], tuple[Tensor, Tensor]]
    backward: Callable[..., Grads]
    work: torch.dtype | None = None  # the dtype it computes in; None: the input's
    call_scores: int = 1 << 62  # the largest call it runs at full speed (scores); no limit by default


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """Where softmax statistics and gradient sums live: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fused_forward(q, k, v, mask: CallMask, scale: float) -> tuple[Tensor, Tensor]:
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return flash(q, k, v, attn_mask=mask.additive, scale=scale)  # (BH, R, Lq, d), (BH, R, Lq)


def _fused_backward(grad, q, k, v, out, lse, mask: CallMask, scale: float, needs) -> Grads:
    flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    return flash_backward(grad, q, k, v, out, lse, 0.0, False, attn_mask=mask.additive, scale=scale)


def _scaled(q: Tensor, scale: float) -> Tensor:
    """``q * scale`` rounded once to q's dtype: a power of two scales exactly in one pass
    (``1 / sqrt(64)``), any other scale goes through float32."""
    if math.frexp(scale)[0] == 0.5:
        return q * scale
    return (q.float() * scale).to(q.dtype)


def _bf16_forward(q, k, v, mask: CallMask, scale: float) -> tuple[Tensor, Tensor]:
    scores = torch.matmul(_scaled(q, scale), k.transpose(-1, -2))  # (BH, R, Lq, Lk) bf16
    if mask.additive is not None:  # its inputs are finite (see above): adding is exact, and 15x
        scores.add_(mask.additive)  # faster than a broadcast masked_fill_ on CPU
    p = torch.softmax(scores, dim=-1)  # bf16, computed in float32
    # log-sum-exp = max - log(largest probability), which is exp(max - lse) rounded once to
    # bfloat16 (within 2**-9): two cheap reductions, where a float32 logsumexp costs two passes
    lse = scores.amax(-1).float() - p.amax(-1).float().log()  # (BH, R, Lq)
    return torch.matmul(p, v), lse


def _bf16_backward(grad, q, k, v, out, lse, mask: CallMask, scale: float, needs) -> Grads:
    q_scaled = _scaled(q, scale)
    scores = torch.matmul(q_scaled, k.transpose(-1, -2))  # (BH, R, Lq, Lk) bf16
    if mask.additive is not None:
        scores.add_(mask.additive)
    p = torch.exp(scores - lse.unsqueeze(-1))  # float32: the row's probabilities on these keys
    dq = dk = dv = None
    if needs[2]:
        dv = torch.matmul(p.to(q.dtype).transpose(-1, -2), grad)  # (BH, R, Lk, d)
    if needs[0] or needs[1]:
        # dS = P * (dP - dO . O). dP and dO . O nearly cancel where one key dominates a row, and a
        # bfloat16 matmul rounds its output: so the difference is taken inside one matmul, in its
        # float32 accumulator, as [dO, -hi, -lo] . [v, 1, 1] with hi + lo = dO . O to 2**-16
        row = (grad.float() * out.float()).sum(-1, keepdim=True)  # (BH, R, Lq, 1): dO . O
        hi = row.to(q.dtype)
        lo = (row - hi.float()).to(q.dtype)
        ones = v.new_ones(*v.shape[:-1], 2)
        dp_less_row = torch.matmul(torch.cat([grad, -hi, -lo], -1),
                                   torch.cat([v, ones], -1).transpose(-1, -2))  # (BH, R, Lq, Lk) bf16
        # the score scale enters dq as a factor, dk through the scaled q
        ds = p.mul_(dp_less_row).to(q.dtype)  # (BH, R, Lq, Lk)
        if needs[0]:
            dq = torch.matmul(ds, k).mul_(scale)  # (BH, R, Lq, d)
        if needs[1]:
            dk = torch.matmul(ds.transpose(-1, -2), q_scaled)  # (BH, R, Lk, d)
    return dq, dk, dv


def _math_scores(q, k, mask: CallMask, scale: float) -> Tensor:
    """Scores, masked pairs selected to -inf: (BH, R, Lq, Lk)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask.allowed is not None:
        scores = scores.masked_fill(~mask.allowed, -math.inf)
    return scores


def _math_forward(q, k, v, mask: CallMask, scale: float) -> tuple[Tensor, Tensor]:
    acc = accumulator(q.dtype)  # every step in float32 (float64): this path is the oracle
    scores = _math_scores(q.to(acc), k.to(acc), mask, scale)
    lse = torch.logsumexp(scores, dim=-1)  # (BH, R, Lq)
    p = torch.exp(scores - lse.unsqueeze(-1))  # masked pairs exactly 0
    return inert_matmul(p, v.to(acc), mask.allowed), lse


def _math_backward(grad, q, k, v, out, lse, mask: CallMask, scale: float, needs) -> Grads:
    acc = accumulator(q.dtype)
    grad, q, k, v, out = (x.to(acc) for x in (grad, q, k, v, out))
    p = torch.exp(_math_scores(q, k, mask, scale) - lse.unsqueeze(-1))  # (BH, R, Lq, Lk)
    if mask.allowed is not None:  # a row's NaN lse (it reads a NaN) must not reach its masked keys
        p = p.masked_fill(~mask.allowed, 0.0)
    dq = dk = dv = None
    if needs[2]:
        dv = inert_matmul(p.transpose(-1, -2), grad, mask.allowed_t)  # (BH, R, Lk, d)
    if needs[0] or needs[1]:
        dp = torch.matmul(grad, v.transpose(-1, -2))  # (BH, R, Lq, Lk)
        row = (grad * out).sum(-1, keepdim=True)  # (BH, R, Lq, 1): dO . O
        ds = p * (dp - row) * scale
        if mask.allowed is not None:  # a masked key's NaN value reaches dp: select it away
            ds = ds.masked_fill(~mask.allowed, 0.0)
        if needs[0]:
            dq = inert_matmul(ds, k, mask.allowed)
        if needs[1]:
            dk = inert_matmul(ds.transpose(-1, -2), q, mask.allowed_t)
    return dq, dk, dv


def inert_matmul(a: Tensor, b: Tensor, allowed: Tensor | None) -> Tensor:
    """``a @ b`` for ``a`` (.., m, j) that is 0 outside ``allowed`` (m, j), with those pairs kept
    inert: a NaN or inf in ``b`` (.., j, c) reaches only the rows allowed to read it, where a plain
    matmul spreads it through 0 * NaN. Where it is read, it gives what SDPA gives: NaN for a NaN or
    for infinities of both signs, else the infinity. ``allowed`` None: every pair is allowed.

    >>> inert_matmul(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0], [math.nan]]),
    ...              torch.tensor([[True, False]]))
    tensor([[2.]])
    """
    if allowed is None:
        return torch.matmul(a, b)
    bad = ~torch.isfinite(b)
    if not bool(bad.any()):
        return torch.matmul(a, b)
    out = torch.matmul(a, b.masked_fill(bad, 0.0))
    reads = allowed.float()  # (m, j)

    def read(values: Tensor) -> Tensor:  # (.., m, c): some allowed pair reads such a value
        return torch.matmul(reads, values.float()) > 0

    nan, pos, neg = read(b.isnan()), read(b == math.inf), read(b == -math.inf)
    out = out.masked_fill(pos, math.inf).masked_fill(neg, -math.inf)
    return out.masked_fill(nan | (pos & neg), math.nan)


PATHS: dict[str, Path] = {
    "fused": Path("fused", _fused_forward, _fused_backward),
    # the same kernel on float32 copies of the inputs (O(n d)): on some CPUs its bfloat16 backward
    # runs slower than its float32 one, and float16 always does
    "fused_fp32": Path("fused_fp32", _fused_forward, _fused_backward, work=torch.float32),
    # its scores and probabilities are materialised: calls that fit in L2 / L3 (512 KiB of bf16)
    "bf16": Path("bf16", _bf16_forward, _bf16_backward, work=torch.bfloat16, call_scores=1 << 18),
    # scores, probabilities and their gradients are materialised in float32: 64 MiB a call at most
    "math": Path("math", _math_forward, _math_backward, call_scores=1 << 24),
}
