"""Attention through a pattern, for models that train and run with it: a function and a module.

``sparse_attention(q, k, v, pattern, layer)`` takes q (B, Hq, n, d) and k, v (B, Hkv, n, d) (Hkv
divides Hq: grouped-query heads as ``enable_gqa`` groups them) and a pattern (an expression, a
stack file, a ``Stack`` or a ``CompiledPattern``), compiles it at the length it meets (compiles are
cached, so a training loop pays once per length), and runs the backend that fits the device:

- ``kernel`` on CPU: patternc's block-sparse kernel, forward and backward, cost proportional to
  the stored blocks;
- ``flex`` on CUDA: FlexAttention compiled, with our BlockMask (built once per layout and device),
  forward and backward;
- ``sdpa``, anywhere: SDPA with the exact dense mask, for short sequences and as the oracle; rows
  that allow no key give 0, as the other two do.

``backend="auto"`` picks ``kernel`` on CPU and ``flex`` on CUDA. Every backend gives the same
numbers up to rounding; ``tests/test_nn.py`` holds them to SDPA with the dense mask.

>>> import torch
>>> q = k = v = torch.randn(1, 4, 256, 16)
>>> out = sparse_attention(q, k, v, "causal & (window(32) | sink(4))")
>>> out.shape
torch.Size([1, 4, 256, 16])
"""

from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from patternc.compiled import CompiledPattern, compile
from patternc.errors import KernelInputError, brief
from patternc.kernels import block_sparse_attention, compiled_flex
from patternc.kernels.inputs import Shapes, check_heads, check_tensors
from patternc.stack import Stack, check_params, params_key

__all__ = ["BACKENDS", "SparseAttention", "sparse_attention"]

BACKENDS = ("auto", "kernel", "flex", "sdpa")
DENSE_ROWS = 1 << 26  # pairs (heads x n x n) up to which the dense mask is small enough for sdpa


def _pattern(pattern, n: int, block, params) -> CompiledPattern:
    if isinstance(pattern, CompiledPattern):
        if pattern.n != n:
            raise KernelInputError(f"the pattern is compiled for n = {pattern.n:,} but q has length {n:,}; "
                                   "pass the pattern itself to compile it at each length")
        return pattern
    if isinstance(pattern, (str, os.PathLike, Stack)):
        bound = check_params(params or {})  # hashable, for the cache
        spec = os.fspath(pattern) if isinstance(pattern, os.PathLike) else pattern
        return _compiled(spec, n, block, bound, params_key(bound))
    raise KernelInputError(f"pattern must be an expression, a stack file, a Stack or a CompiledPattern, got "
                           f"{type(pattern).__name__}")


@lru_cache(maxsize=64)  # per pattern and length: a training loop reads a stack file once
def _compiled(pattern: str | Stack, n: int, block, params: tuple, key: tuple) -> CompiledPattern:
    # ``key`` is ``params_key(params)``, read by the cache alone (10**16 == 1e16 evaluate differently)
    return compile(pattern, n, block=block, params=dict(params))


@lru_cache(maxsize=64)
def _block_mask(cp: CompiledPattern, layer: int, device: str):
    return cp.to_block_mask(layer, device=device)


@lru_cache(maxsize=16)
def _dense_mask(cp: CompiledPattern, layer: int, device: str, rows: tuple[int, ...] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, H, r, n) bool, the pattern's rows at positions ``rows`` (None: every row, r = n), with rows
    that allow no key opened on their own position (a finite softmax), and (1, H, r, 1) float: 1
    where a row has a key (its output is kept), 0 where it has none."""
    if rows is None:
        positions = np.arange(cp.n)
        mask = torch.from_numpy(cp.to_dense(layer=layer))  # (H, n, n)
    else:
        positions = np.asarray(rows, np.int64)
        keys = np.arange(cp.n)[None, :]
        mask = torch.from_numpy(np.stack([cp.allows(positions[:, None], keys, layer, h)
                                          for h in range(cp.heads)]))  # (H, r, n)
    mask = mask.to(device)
    has_key = mask.any(-1)  # (H, r)
    own = torch.from_numpy(positions[:, None] == np.arange(cp.n)[None, :]).to(device)  # (r, n)
    opened = mask | (~has_key[..., None] & own)
    return opened[None], has_key[None, :, :, None].to(torch.float32)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern, layer: int = 0, *,
                     block: int | tuple[int, int] | None = None, params: dict | None = None,
                     scale: float | None = None, backend: str = "auto",
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q (B, Hq, n, d) over k, v (B, Hkv, n, d) under ``pattern``'s layer ``layer``;
    differentiable in q, k and v on every backend (see the module docstring).

    ``rows`` (r,) int: q holds only the queries at those positions, (B, Hq, r, d), and so does the
    output; it is computed exactly with SDPA and the pattern's rows there, whatever the backend (a
    model's last layer asked for a few answers need not compute the rest).

    >>> import torch
    >>> q = torch.randn(2, 8, 128, 16, requires_grad=True)
    >>> k = v = torch.randn(2, 2, 128, 16)  # 2 KV heads for 8 query heads
    >>> sparse_attention(q, k, v, "causal & window(16)").sum().backward()
    >>> q.grad.shape
    torch.Size([2, 8, 128, 16])
    """
    if backend not in BACKENDS:
        raise KernelInputError(f"backend must be one of {', '.join(BACKENDS)}, got {brief(backend)}")
    # every path: shapes, dtypes and devices before any work (torch's own errors name no argument)
    shapes = check_tensors(q, k, v, "sparse_attention", scale, rows=rows is not None)
    if rows is not None:
        return _row_attention(q, k, v, pattern, layer, block, params, scale, rows, shapes)
    cp = _pattern(pattern, shapes.n, block, params)
    if backend == "auto":
        backend = "flex" if q.device.type == "cuda" else "kernel"
    if backend == "kernel":
        return block_sparse_attention(q, k, v, cp, layer, scale=scale)
    check_heads(shapes, cp, layer, "sparse_attention")  # before any tensor is built
    groups = q.shape[1] != k.shape[1]  # grouped-query heads
    if backend == "flex":
        if q.device.type != "cuda":
            raise KernelInputError(f"backend 'flex' trains on CUDA only (FlexAttention has no backward on "
                                   f"{q.device.type}); use 'kernel' there")
        return compiled_flex()(q, k, v, block_mask=_block_mask(cp, layer, str(q.device)), scale=scale,
                               enable_gqa=groups)
    if cp.heads * cp.n * cp.n > DENSE_ROWS:
        raise KernelInputError(f"backend 'sdpa' builds the dense mask: {cp.heads} heads x {cp.n:,}^2 pairs "
                               f"is over {DENSE_ROWS:,}; use 'kernel' or 'flex'")
    mask, keep = _dense_mask(cp, layer, str(q.device))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=groups)
    return out * keep.to(out.dtype)


def _row_attention(q, k, v, pattern, layer: int, block, params, scale, rows: torch.Tensor,
                   shapes: Shapes) -> torch.Tensor:
    """``sparse_attention`` of the queries at positions ``rows`` only (SDPA with the pattern's rows)."""
    n = shapes.n
    if not isinstance(rows, torch.Tensor):
        raise KernelInputError(f"sparse_attention: rows must be a 1-D integer tensor, got "
                               f"{type(rows).__name__}")
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64) or len(rows) != q.shape[2]:
        raise KernelInputError(f"sparse_attention: rows must be a 1-D integer tensor of q's {q.shape[2]} "
                               f"positions, got shape {tuple(rows.shape)} of {rows.dtype}")
    if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < n:
        raise KernelInputError(f"sparse_attention: rows must lie in [0, {n:,}), got values from "
                               f"{int(rows.min())} to {int(rows.max())}")
    cp = _pattern(pattern, n, block, params)
    check_heads(shapes, cp, layer, "sparse_attention")  # before any mask is built
    if cp.heads * len(rows) * n > DENSE_ROWS:
        raise KernelInputError(f"rows build the dense mask of their rows: {cp.heads} heads x {len(rows):,} "
                               f"rows x {n:,} keys is over {DENSE_ROWS:,}; ask for fewer rows")
    mask, keep = _dense_mask(cp, layer, str(q.device), tuple(rows.tolist()))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out * keep.to(out.dtype)


class SparseAttention(nn.Module):
    """``sparse_attention`` as a module for one layer of a model: q, k, v in, attention out.

    >>> import torch
    >>> attend = SparseAttention("conf/pattern/longformer.yaml", layer=3)
    >>> attend(*(torch.randn(1, 12, 512, 8) for _ in range(3))).shape
    torch.Size([1, 12, 512, 8])
    """

    def __init__(self, pattern, layer: int = 0, *, block: int | tuple[int, int] | None = None,
                 params: dict | None = None, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise KernelInputError(f"backend must be one of {', '.join(BACKENDS)}, got {brief(backend)}")
        self.pattern, self.layer, self.block = pattern, layer, block
        self.params, self.backend = params, backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                ) -> torch.Tensor:
        return sparse_attention(q, k, v, self.pattern, self.layer, block=self.block, params=self.params,
                                scale=scale, backend=self.backend)

    def extra_repr(self) -> str:
        return f"pattern={self.pattern!r}, layer={self.layer}, backend={self.backend!r}"
