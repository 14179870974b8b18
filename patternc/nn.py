"""Attention through a pattern, for models that train and run with it: a function and a module.

``sparse_attention(q, k, v, pattern, layer)`` takes q (B, Hq, n, d) and k, v (B, Hkv, n, d) (Hkv
divides Hq: grouped-query heads as ``enable_gqa`` groups them) and a pattern (an expression, a
stack file, a ``Stack`` or a ``CompiledPattern``), compiles it at the length it meets (compiles are
cached, so a training loop pays once per length), checks the tensors, and runs
``patternc.kernels.attend``: ``backend`` is one of ``auto``, ``kernel`` (the block-sparse kernel,
forward and backward, on any device), ``flex`` (FlexAttention with our BlockMask; on CUDA it
trains, on CPU it runs forward only) and ``sdpa`` (SDPA with the exact mask of the rows, anywhere),
as ``patternc.kernels.dispatch`` says. ``auto`` picks the block-sparse kernel of the device.
Every backend gives the same numbers up to rounding; ``tests/test_nn.py`` holds them to SDPA with
the dense mask.

>>> import torch
>>> q = k = v = torch.randn(1, 4, 256, 16)
>>> out = sparse_attention(q, k, v, "causal & (window(32) | sink(4))")
>>> out.shape
torch.Size([1, 4, 256, 16])
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
from torch import nn

from patternc.compiled import CompiledPattern, compile
from patternc.errors import KernelInputError
from patternc.kernels import BACKENDS, attend, backend_name
from patternc.kernels.inputs import check_heads, check_tensors
from patternc.stack import Stack, check_params, params_key

__all__ = ["BACKENDS", "SparseAttention", "sparse_attention"]



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


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern, layer: int = 0, *,
                     block: int | tuple[int, int] | None = None, params: dict | None = None,
                     scale: float | None = None, backend: str = "auto",
                     rows: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of q (B, Hq, n, d) over k, v (B, Hkv, n, d) under ``pattern``'s layer ``layer``;
    differentiable in q, k and v on every backend (see the module docstring).

    ``rows`` (r,) int: q holds only the queries at those positions, (B, Hq, r, d), and so does the
    output; it is computed exactly with SDPA and the pattern's rows there (a model's last layer
    asked for a few answers need not compute the rest).

    >>> import torch
    >>> q = torch.randn(2, 8, 128, 16, requires_grad=True)
    >>> k = v = torch.randn(2, 2, 128, 16)  # 2 KV heads for 8 query heads
    >>> sparse_attention(q, k, v, "causal & window(16)").sum().backward()
    >>> q.grad.shape
    torch.Size([2, 8, 128, 16])
    """
    backend = backend_name(backend, "sparse_attention's backend")
    # every path: shapes, dtypes and devices before any work (torch's own errors name no argument)
    shapes = check_tensors(q, k, v, "sparse_attention", scale, rows=rows is not None)
    if rows is not None:
        _check_rows(rows, q, shapes.n)
    cp = _pattern(pattern, shapes.n, block, params)
    check_heads(shapes, cp, layer, "sparse_attention")  # before any tensor is built
    return attend(q, k, v, cp, layer, rows=rows, scale=scale, backend=backend)


def _check_rows(rows, q: torch.Tensor, n: int) -> None:
    if not isinstance(rows, torch.Tensor):
        raise KernelInputError(f"sparse_attention: rows must be a 1-D integer tensor, got "
                               f"{type(rows).__name__}")
    if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64) or len(rows) != q.shape[2]:
        raise KernelInputError(f"sparse_attention: rows must be a 1-D integer tensor of q's {q.shape[2]} "
                               f"positions, got shape {tuple(rows.shape)} of {rows.dtype}")
    if len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < n:
        raise KernelInputError(f"sparse_attention: rows must lie in [0, {n:,}), got values from "
                               f"{int(rows.min())} to {int(rows.max())}")


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
        backend = backend_name(backend, "SparseAttention's backend")
        self.pattern, self.layer, self.block = pattern, layer, block
        self.params, self.backend = params, backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                ) -> torch.Tensor:
        return sparse_attention(q, k, v, self.pattern, self.layer, block=self.block, params=self.params,
                                scale=scale, backend=self.backend)

    def extra_repr(self) -> str:
        return f"pattern={self.pattern!r}, layer={self.layer}, backend={self.backend!r}"
