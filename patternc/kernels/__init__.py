"""Attention kernels that run a compiled layout.

``attend`` (``patternc.kernels.dispatch``) is the one front door: one vocabulary of backends
(``auto``, ``kernel``, ``flex``, ``sdpa``) for every caller. Behind it:

- ``kernel``: our block-sparse kernel in plain torch (``reference.block_sparse_attention``),
  differentiable in q, k and v, with grouped-query heads; its calls run on a compute path
  (``paths``: SDPA's fused CPU kernel, bfloat16 matmuls, or unfused math) chosen by the user or by
  a one-off measurement on the machine;
- ``flex``: ``torch.compile(flex_attention)``, compiled once per process, with ``cp.to_block_mask``;
- ``sdpa``: SDPA with the exact mask of the rows computed; ``attend`` also runs ``kernel`` this way
  for a short sequence where this machine's cost model (``dense_path``) says the walk would be
  slower than one masked SDPA call.

``prepare(name, cp, layer)`` returns ``run(q, k, v) -> out`` on (B, H, n, d) tensors for timing
(``patternc.measure``): a backend above, or ``dense_causal`` (``causal_sdpa``: SDPA with
``is_causal=True``), the baseline of every ratio.

>>> import torch
>>> q, k, v = torch.randn(3, 1, 2, 256, 16, generator=torch.Generator().manual_seed(0))  # (B, H, n, d) each
>>> run = prepare("kernel", patternc.compile("causal", n=256, block=64), layer=0)
>>> out = run(q, k, v)  # (B, H, n, d)
>>> torch.allclose(out, causal_sdpa(q, k, v), atol=1e-5)  # a causal pattern is dense causal attention
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from patternc.errors import KernelInputError
from patternc.kernels.dispatch import BACKENDS, CUDA_FLEX_TILE, RENAMED, attend, backend_name
from patternc.kernels.inputs import check_flex
from patternc.kernels.paths import PATH_ENV, KernelPaths, PathTimes, measure_paths, resolve_paths
from patternc.kernels.reference import block_sparse_attention

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = [
    "BACKENDS",
    "BASELINE",
    "CUDA_FLEX_TILE",
    "PATH_ENV",
    "RENAMED",
    "KernelInputError",
    "KernelPaths",
    "PathTimes",
    "Run",
    "attend",
    "backend_name",
    "block_sparse_attention",
    "causal_sdpa",
    "compiled_flex",
    "measure_paths",
    "prepare",
    "resolve_paths",
]

Run = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_FLEX = None  # torch.compile(flex_attention), built on first use and shared by every call


def compiled_flex():
    """``flex_attention`` compiled once per process: compiling costs seconds, recompiles are cached
    by torch per block shape and mask_mod. A call that would train where FlexAttention has no
    backward (CPU) is refused first (``check_flex``), whoever calls it."""
    global _FLEX
    if _FLEX is None:
        import torch._dynamo.config as dynamo
        from torch.nn.attention.flex_attention import flex_attention

        # each pattern's mask_mod and each shape is a new graph; past the default limit of 8,
        # dynamo silently falls back to eager flex, which is ~100x slower on CPU
        dynamo.recompile_limit = max(dynamo.recompile_limit, 256)
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _checked_flex


def _checked_flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    check_flex(query, key, value)
    return _FLEX(query, key, value, *args, **kwargs)


def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense causal SDPA, the baseline: (B, H, n, d) -> (B, H, n, d)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


BASELINE = "dense_causal"  # prepare()'s name for causal_sdpa, the baseline of every ratio


def prepare(name: str, cp: CompiledPattern, layer: int = 0, device: str = "cpu") -> Run:
    """``run(q, k, v)`` for backend ``name`` (or ``BASELINE``) on layer ``layer`` of ``cp``; what a
    layout needs is built here, outside any timing.

    >>> import torch
    >>> cp = patternc.compile("causal & window(64)", n=256, block=32)
    >>> q, k, v = torch.randn(3, 1, 2, 256, 16, generator=torch.Generator().manual_seed(0))  # (B, H, n, d)
    >>> out = prepare("kernel", cp)(q, k, v)
    >>> torch.allclose(out, prepare("sdpa", cp)(q, k, v), atol=1e-5)  # block-sparse = dense masked SDPA
    True

    ``flex`` runs the same way; on CPU its first call compiles FlexAttention (about 20 s).
    """
    if name == BASELINE:
        return causal_sdpa
    name = backend_name(name)
    cp.node(layer, 0)  # refuses a bad layer now, not at the first call
    target = torch.device(device)
    if name == "flex":  # the block mask, and the tiles refused, before any timing
        from patternc.kernels.dispatch import check_flex_tiles

        check_flex_tiles(cp, target)
        cp.derived(("block_mask", layer, str(target)), lambda: cp.to_block_mask(layer, device=str(target)))
    return lambda q, k, v: attend(q, k, v, cp, layer, backend=name)
