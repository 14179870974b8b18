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

from patternc.errors import KernelInputError
from patternc.kernels.dispatch import (
    BACKENDS,
    BASELINE,
    CUDA_FLEX_TILE,
    RENAMED,
    Run,
    attend,
    backend_name,
    causal_sdpa,
    prepare,
)
from patternc.kernels.flex import compiled_flex
from patternc.kernels.paths import PATH_ENV, KernelPaths, PathTimes, measure_paths, resolve_paths
from patternc.kernels.reference import block_sparse_attention

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

