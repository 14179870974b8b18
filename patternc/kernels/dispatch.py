"""One front door to attention under a compiled pattern: ``attend``, and the one vocabulary of
backends every caller uses (``patternc.nn``, ``patternc.hf``, ``patternc.measure``, the search).

``attend(q, k, v, cp, layer)`` computes queries of ``cp`` over all of its keys. ``q`` holds either
the last ``r`` rows of ``cp`` (``rows=None``: the whole sequence when ``r`` is every row, a decode
step or a chunk after cached keys otherwise) or the rows at the positions ``rows``. The backends:

- ``kernel``: patternc's block-sparse kernel (``block_sparse_attention``), forward and backward, on
  any device, cost proportional to the stored blocks; it runs whole sequences;
- ``flex``: FlexAttention, ``torch.compile``'d once per process, with the pattern's ``BlockMask``
  (built once per pattern, layer and device); on CUDA the blocks must be multiples of
  ``CUDA_FLEX_TILE``, and on CPU it has no backward (refused before compiling);
- ``sdpa``: SDPA with the exact boolean mask of the rows, built in slices of at most
  ``ROW_MASK_ELEMENTS`` booleans (a decode step's mask is one row per head), on any device,
  differentiable;
- ``auto`` never guesses speed: a whole sequence of more than one key block goes to the block-sparse
  kernel of its device (``flex`` on CUDA when the blocks allow, ``kernel`` elsewhere); query rows
  and a sequence of one key block (nothing to skip) go to ``sdpa``.

Never slower than dense: a whole sequence for ``kernel`` on CPU, without gradients, whose mask fits
one SDPA call (``ROW_MASK_ELEMENTS``) runs as ``sdpa`` where this machine's measured cost model
says the block walk would take longer (``dense_path``: short sequences cut into many calls).

A backend that cannot run the rows asked for hands them to ``sdpa`` (``kernel`` runs no query
range; ``flex`` runs the last rows, not arbitrary positions). Every backend gives a query with no
allowed key the output 0, and every one is exact against the dense mask.

``reference`` was the kernel's name in ``patternc.kernels``, ``patternc.hf`` and the search: it
still works, with a ``DeprecationWarning``.

>>> import torch
>>> cp = patternc.compile("causal & (sink(4) | window(32))", n=256, block=32)
>>> q, k, v = torch.randn(3, 1, 2, 256, 16, generator=torch.Generator().manual_seed(0))  # (B, H, n, d)
>>> out = attend(q, k, v, cp)                                   # the whole sequence: the kernel
>>> last = attend(q[:, :, -1:], k, v, cp)                       # the last row only: SDPA with its mask
>>> torch.allclose(out[:, :, -1:], last, atol=1e-5)
True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from patternc.errors import KernelInputError, brief
from patternc.kernels.dense_path import dense_is_cheaper
from patternc.kernels.flex import compiled_flex
from patternc.kernels.masked_sdpa import ROW_MASK_ELEMENTS, masked_sdpa
from patternc.kernels.reference import SCORE_BUDGET, block_sparse_attention, is_dense_causal

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["BACKENDS", "BASELINE", "CUDA_FLEX_TILE", "RENAMED", "Run", "attend", "backend_name",
           "causal_sdpa", "check_flex_tiles", "choose", "prepare"]

BACKENDS = ("auto", "kernel", "flex", "sdpa")
RENAMED = {"reference": "kernel"}  # old name -> the name it has now
CUDA_FLEX_TILE = 128  # FlexAttention's CUDA kernels tile q and kv by up to 128: blocks must divide by it
FLEX_ATTENTION: Callable | None = None  # None: compiled flex_attention; tests put eager flex here

Tensor = torch.Tensor


def backend_name(name: object, where: str = "backend") -> str:
    """``name`` as a backend of ``BACKENDS``; an old name is translated with a ``DeprecationWarning``
    and anything else is a ``KernelInputError`` naming ``where``.

    >>> backend_name("auto")
    'auto'
    """
    if isinstance(name, str) and name in RENAMED:
        warnings.warn(f"{where} {name!r} is now called {RENAMED[name]!r}; the old name will be removed",
                      DeprecationWarning, stacklevel=3)
        return RENAMED[name]
    if not isinstance(name, str) or name not in BACKENDS:
        raise KernelInputError(f"{where} must be one of {', '.join(BACKENDS)}, got {brief(name)}")
    return name


def choose(backend: str, cp: CompiledPattern, queries: int, device: torch.device,
           positions: bool = False) -> str:
    """The backend that runs ``queries`` rows of ``cp`` on ``device``: the last ones, or rows at
    arbitrary ``positions`` (see the module docstring)."""
    whole = not positions and cp.first_query == 0 and queries == cp.n
    if backend == "auto":
        if not whole or cp.grid.nbk == 1:
            return "sdpa"
        if device.type == "cuda":
            return "flex" if _flex_tiles_fit(cp) else "kernel"
        return "kernel"
    if (backend == "kernel" and not whole) or (backend == "flex" and positions):
        return "sdpa"  # exact through the rows' masks
    return backend


def attend(q: Tensor, k: Tensor, v: Tensor, cp: CompiledPattern, layer: int = 0, *,
           rows: Tensor | None = None, scale: float | None = None, backend: str = "auto") -> Tensor:
    """Attention of the queries ``q`` (B, H, r, d) of ``cp``'s layer ``layer`` over ``k``, ``v``
    (B, Hkv, n, d), ``n = cp.n`` (Hkv divides H: grouped-query heads): (B, H, r, d).

    ``rows``: None, ``q`` holds ``cp``'s last ``r`` rows; or a 1-d integer tensor (r,), the
    positions of ``q``'s queries. Shapes are the caller's to check (``patternc.nn`` and
    ``patternc.hf`` check theirs).
    """
    backend = backend_name(backend)
    chosen = choose(backend, cp, q.shape[2], q.device, positions=rows is not None)
    if chosen == "kernel" and not _walk_loses(q, k, v, cp, layer):
        return block_sparse_attention(q, k, v, cp, layer, scale=scale)
    if chosen == "flex":
        return _flex(q, k, v, cp, layer, scale)
    if rows is None:
        first = cp.first_query + cp.nq - q.shape[2]  # the last r rows
        positions = np.arange(first, first + q.shape[2])
    else:
        positions = rows.detach().cpu().numpy().astype(np.int64)
    return masked_sdpa(q, k, v, cp, layer, scale, positions)


def _walk_loses(q: Tensor, k: Tensor, v: Tensor, cp: CompiledPattern, layer: int) -> bool:
    """Whether the whole sequence ``q`` (B, H, n, d) runs faster as one masked SDPA call (exact, the
    mask kept with ``cp``) than as the block walk, by ``dense_path``'s model of this machine. Never
    for a dense causal layer (the kernel runs SDPA's causal kernel), nor for keys or values with a
    NaN or inf (SDPA would spread a masked one through 0 * NaN; the walk keeps it inert)."""
    B, H, n, d = q.shape
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if grad or q.device.type != "cpu" or cp.heads * n * n > ROW_MASK_ELEMENTS or q.dtype != k.dtype:
        return False
    cheaper = not is_dense_causal(cp, layer) and dense_is_cheaper(cp, layer, B, H, d, q.dtype, SCORE_BUDGET)
    return cheaper and all(bool(torch.isfinite(x.sum())) for x in (k, v))


def check_flex_tiles(cp: CompiledPattern, device: torch.device) -> None:
    """Refuse FlexAttention on CUDA with blocks its kernels cannot tile, saying what to compile."""
    if device.type == "cuda" and not _flex_tiles_fit(cp):
        bq, bk = cp.block
        raise KernelInputError(f"FlexAttention on CUDA needs blocks that are multiples of {CUDA_FLEX_TILE} "
                               f"(its kernel tiles), got {bq}x{bk}: compile with block={CUDA_FLEX_TILE}, or "
                               "use backend='auto'")


def _flex_tiles_fit(cp: CompiledPattern) -> bool:
    return all(b % CUDA_FLEX_TILE == 0 for b in cp.block)


def _flex(q, k, v, cp: CompiledPattern, layer: int, scale: float | None) -> Tensor:
    check_flex_tiles(cp, q.device)
    block_mask = cp.derived(("block_mask", layer, str(q.device)),
                            lambda: cp.to_block_mask(layer, device=str(q.device)))
    extra = cp.nq - q.shape[2]  # rows the compiled query range holds before the call's own
    if extra:
        q = F.pad(q, (0, 0, extra, 0))  # (B, H, nq, d)
    flex = FLEX_ATTENTION or compiled_flex()
    out = flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out[:, :, extra:]


Run = Callable[[Tensor, Tensor, Tensor], Tensor]


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
        check_flex_tiles(cp, target)
        cp.derived(("block_mask", layer, str(target)), lambda: cp.to_block_mask(layer, device=str(target)))
    return lambda q, k, v: attend(q, k, v, cp, layer, backend=name)
