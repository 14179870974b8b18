"""What the block-sparse kernel checks before any of its work runs.

Every fault is a :class:`~patternc.errors.KernelInputError` that names the argument and both values:
tensors that are not 4-d, an empty batch or no heads, shapes that disagree with each other or with
the compiled pattern (``n``, heads, the grouping of query heads over KV heads, the length and head
dimension of ``v``), dtypes or devices that differ, and dtypes the kernel does not take.

>>> import torch
>>> q, k = torch.zeros(2, 8, 128, 16), torch.zeros(2, 2, 128, 16)  # (B, H, n, d), (B, Hkv, n, d)
>>> check_inputs(q, k, k, patternc.compile("causal", n=128), layer=0)
Shapes(batch=2, heads=8, kv_heads=2, n=128, head_dim=16)
>>> check_inputs(q, k[:, :, :64], k, patternc.compile("causal", n=128), layer=0)
Traceback (most recent call last):
  ...
patternc.errors.KernelInputError: block_sparse_attention: k has length 64 but q has 128
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from patternc.errors import KernelInputError

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["DTYPES", "Shapes", "check_flex", "check_heads", "check_inputs", "check_tensors", "device_memory",
           "dtype_name"]

# the dtypes SDPA's fused CPU kernel and its backward take (float16 is computed in float32 on CPU)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass(frozen=True, slots=True)
class Shapes:
    """The sizes of one call: q is (batch, heads, n, head_dim), k and v (batch, kv_heads, n, head_dim)."""

    batch: int
    heads: int
    kv_heads: int
    n: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per KV head: query head ``h`` reads KV head ``h // group``."""
        return self.heads // self.kv_heads


def check_tensors(q, k, v, caller: str = "block_sparse_attention", scale: float | None = None,
                  rows: bool = False) -> Shapes:
    """The sizes of q (B, H, n, d) and k, v (B, Hkv, n, d) as every attention entry takes them, or a
    ``KernelInputError`` from ``caller`` for the first thing that is wrong: tensors, 4-d, one device and
    one dtype, a dtype attention takes, batches and heads that agree, k and v of q's length (of one
    length when q holds some ``rows`` only), k of q's head_dim, and a finite ``scale``.

    >>> q, k = torch.zeros(1, 2, 8, 4), torch.zeros(8, 4)
    >>> check_tensors(q, k, k, "sparse_attention")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    patternc.errors.KernelInputError: sparse_attention: k must be 4-d (batch, heads, n, head_dim), got 2-d...
    """
    def fail(message: str) -> KernelInputError:
        return KernelInputError(f"{caller}: {message}")

    named = {"q": q, "k": k, "v": v}
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise fail(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:  # a 3-d k or v would broadcast over the batch instead
            raise fail(f"{name} must be 4-d (batch, heads, n, head_dim), got {x.dim()}-d of shape "
                       f"{tuple(x.shape)}")
    for name, x in named.items():
        if x.device != q.device:
            raise fail(f"{name} is on {x.device} but q is on {q.device}: all three must be on one device")
        if x.dtype != q.dtype:
            raise fail(f"{name} has dtype {dtype_name(x.dtype)} but q has {dtype_name(q.dtype)}: all "
                       "three must have one dtype")
    if q.device.type == "meta":
        raise fail("q, k and v are meta tensors, which hold no values: attention needs real data")
    if q.dtype not in DTYPES:
        names = ", ".join(dtype_name(d) for d in DTYPES)
        raise fail(f"q has dtype {dtype_name(q.dtype)}; {caller} takes {names}")
    B, H, n, d = q.shape
    if B == 0 or H == 0 or d == 0:
        raise fail(f"q has shape {tuple(q.shape)}: batch, heads and head_dim must be at least 1")
    for name in ("k", "v"):
        if named[name].shape[0] != B:
            raise fail(f"{name} has batch {named[name].shape[0]} but q has batch {B}")
    if v.shape[1] != k.shape[1]:
        raise fail(f"v has {v.shape[1]} heads but k has {k.shape[1]}")
    kv_heads = k.shape[1]
    if kv_heads == 0 or H % kv_heads:
        raise fail(f"q has {H} heads and k has {kv_heads}: q's heads must be a multiple of k's "
                   f"(grouped-query attention: query head h reads KV head h // {H // max(kv_heads, 1)})")
    keys = k.shape[2] if rows else n  # q's rows are some positions of k's sequence
    for name, other in (("k", "q"), ("v", "k" if rows else "q")):
        if named[name].shape[2] != keys:
            raise fail(f"{name} has length {named[name].shape[2]} but {other} has {keys}")
    if k.shape[3] != d:
        raise fail(f"k has head_dim {k.shape[3]} but q has {d}")
    if scale is not None and not (isinstance(scale, int | float) and math.isfinite(scale)):
        raise fail(f"scale must be a finite number, got {scale!r}")
    return Shapes(batch=B, heads=H, kv_heads=kv_heads, n=keys, head_dim=d)


def check_heads(shapes: Shapes, cp: CompiledPattern, layer: int, caller: str = "block_sparse_attention",
                ) -> None:
    """q's heads against the pattern's (a one-head pattern applies to any number), and the layer."""
    if cp.heads not in (1, shapes.heads):
        raise KernelInputError(f"{caller}: q has {shapes.heads} heads but the pattern has {cp.heads} (a "
                               f"one-head pattern applies to any number of heads)")
    cp.node(layer, 0)  # a layer outside the stack is refused here, before any work


def check_inputs(q, k, v, cp: CompiledPattern, layer: int, scale: float | None = None,
                 score_budget: int = 1) -> Shapes:
    """The call's sizes, or a ``KernelInputError`` for the first thing that is wrong: ``check_tensors``,
    then what this kernel adds (a whole sequence of the pattern's n, one head_dim for q, k and v)."""
    def fail(message: str) -> KernelInputError:
        return KernelInputError(f"block_sparse_attention: {message}")

    if not all(hasattr(cp, name) for name in ("layout", "node", "grid", "heads", "n")):
        raise fail(f"cp must be a compiled pattern (patternc.compile(...)), got {type(cp).__name__}")
    shapes = check_tensors(q, k, v, scale=scale)
    check_heads(shapes, cp, layer)
    if cp.first_query:
        raise fail(f"the pattern is compiled for the queries [{cp.first_query:,}, {cp.n:,}) only; this "
                   "kernel runs whole sequences: compile without first_query")
    if shapes.n != cp.n:
        raise fail(f"q has length {shapes.n} but the pattern was compiled for n = {cp.n}")
    if v.shape[3] != shapes.head_dim:
        # SDPA's fused CPU kernel and its backward need one head size for q, k and v
        raise fail(f"v has head_dim {v.shape[3]} but q has {shapes.head_dim}: this kernel needs one "
                   f"head_dim for q, k and v")
    if not isinstance(score_budget, int) or score_budget < 1:
        raise fail(f"score_budget must be a positive int, got {score_budget!r}")
    return shapes


def check_flex(q, k, v) -> None:
    """FlexAttention has no backward on CPU: refuse a call that would need one, before it is compiled,
    saying what trains there (torch would raise NotImplementedError from inside the compiled graph)."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise KernelInputError("FlexAttention has no backward on CPU, and these inputs require "
                               "gradients: train on CPU with patternc's block-sparse kernel (patternc.nn "
                               "backend='kernel'), run FlexAttention under "
                               "torch.no_grad(), or train with it on CUDA")


def device_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: the accelerator's, or this machine's physical memory on a CPU.
    What a kernel would allocate is held to it before any allocation (a huge batch or head_dim is a
    clear error, not the allocator's).

    >>> device_memory(torch.device("cpu")) > 0
    True
    """
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
