"""How one attention call of a sparsified model is computed: the pattern at the call's length, and
the kernel that runs it.

A call is one sequence shape of a batch: ``m`` keys, the last ``s`` of them the call's queries
(``s == m``: a whole sequence, a prefill; ``s < m``: a decode step or a chunk after cached keys).
Its pattern is the stack at the length the model serves (``Patterns``): its rows ``[m - s, m)``
against the keys ``[0, m)``, exact, cached.

Backends:

- ``reference``: our block-sparse kernel (``patternc.kernels.block_sparse_attention``), whole
  sequences only (it runs no query range), on any device, differentiable;
- ``flex``: FlexAttention (``torch.compile``'d, once per process) with our ``BlockMask``, whole
  sequences and query ranges; on CUDA its blocks must be multiples of 128;
- ``sdpa``: SDPA with the exact boolean mask of the rows, built in slices of at most
  ``ROW_MASK_ELEMENTS`` booleans, so a decode step's mask is one row per head;
- ``auto``: never guesses speed. A whole sequence of more than one key block goes to the
  block-sparse kernel of its device (``flex`` on CUDA when the blocks are multiples of 128,
  ``reference`` elsewhere); a sequence of one key block (nothing to skip) and query rows (a decode
  step, a chunk: ``reference`` runs no query range, and compiled ``flex`` would recompile for every
  new length) go to ``sdpa``.

Every backend gives a query with no allowed key the output 0 (the kernel's and FlexAttention's
convention), and every one is exact against the dense mask.

>>> cp = patterns.rows(served=4096, keys=4096, queries=1)               # doctest: +SKIP
>>> out = attend(q, k, v, cp, layer=0, scale=0.125, backend="auto")     # doctest: +SKIP
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import patternc
from patternc.compiled import CompiledPattern
from patternc.errors import ModelError
from patternc.hf.model import ModelShape, non_causal_error
from patternc.kernels import CUDA_FLEX_TILE, block_sparse_attention, compiled_flex
from patternc.stack import Stack

__all__ = ["BACKENDS", "ROW_MASK_ELEMENTS", "Patterns", "attend", "choose", "row_mask"]

BACKENDS = ("auto", "reference", "flex", "sdpa")
ROW_MASK_ELEMENTS = 1 << 24  # booleans of one SDPA call's mask (16 MiB): larger row sets go in slices
FLEX_ATTENTION: Callable | None = None  # None: compiled flex_attention; tests put eager flex here

Tensor = torch.Tensor


class Patterns:
    """The stack at each length the model serves, and the rows its calls compute: the last
    ``cached`` of them, and the FlexAttention block masks built from them.

    A call meets ``keys`` tokens, the last ``queries`` of them its queries, in a model that serves
    ``served`` tokens (a generation's total length, a declared ``max_length``, or the call's own
    length). Its rows are those of the stack compiled at ``served`` (``CompiledPattern.prefix``),
    so row ``t`` reads the same keys whatever follows it.
    """

    def __init__(self, stack: Stack, shape: ModelShape, block: int | tuple[int, int] | None,
                 params: dict[str, int | float] | None, cached: int = 64) -> None:
        self.stack, self.shape, self.block, self.params = stack, shape, block, dict(params or {})
        self.cached = cached
        self._compiled: OrderedDict[tuple[int, int, int], CompiledPattern] = OrderedDict()
        self._block_masks: OrderedDict[tuple, object] = OrderedDict()

    def whole(self, n: int) -> CompiledPattern:
        """Every row at length ``n``."""
        return self.rows(n, n, n)

    def rows(self, served: int, keys: int, queries: int) -> CompiledPattern:
        """At least the last ``queries`` rows of ``keys`` tokens, served at length ``served``: the
        query range starts at a multiple of the query block (``random()`` is drawn per block row, and
        a cut keeps whole block rows), so it may hold a few rows more."""
        bq = patternc.compiled.block_shape(self.stack, served, self.block)[0]
        first = 0 if queries >= keys else (keys - queries) - (keys - queries) % bq
        key = (served, keys, first)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        if served == keys:  # the rows of the pattern at the call's own length, compiled alone
            cp = patternc.compile(self.stack, keys, block=self.block, params=self.params, first_query=first)
            if self.shape.causal and not cp.causal:
                raise self._leak(cp)
        else:
            cp = self.rows(served, served, served).prefix(keys, first)
        self._compiled[key] = cp
        while len(self._compiled) > self.cached:
            self._compiled.popitem(last=False)
        return cp

    def _leak(self, cp: CompiledPattern) -> ModelError:
        from patternc.layout import future_pair

        for l in range(cp.layers):
            for h in range(cp.heads):
                if future_pair(cp.node(l, h), cp.layout(l, h)) is not None:
                    return non_causal_error(self.stack, self.shape, cp.n, l, h)
        return non_causal_error(self.stack, self.shape, cp.n, 0, 0)  # unreachable: cp.causal was False

    def block_mask(self, cp: CompiledPattern, layer: int, device: torch.device):
        """``cp.to_block_mask(layer)`` on ``device``, built once per (served length, length, rows, layer,
        device)."""
        key = (cp.bound_n, cp.n, cp.first_query, layer, str(device))
        if key not in self._block_masks:
            self._block_masks[key] = cp.to_block_mask(layer, device=str(device))
            while len(self._block_masks) > self.cached:
                self._block_masks.popitem(last=False)
        return self._block_masks[key]


def choose(backend: str, cp: CompiledPattern, queries: int, device: torch.device) -> str:
    """The backend that runs ``queries`` rows of ``cp`` on ``device`` (see the module's docstring)."""
    whole = cp.first_query == 0 and queries == cp.n
    if backend == "auto":
        if not whole or cp.grid.nbk == 1:
            return "sdpa"
        if device.type == "cuda":
            return "flex" if all(b % CUDA_FLEX_TILE == 0 for b in cp.block) else "reference"
        return "reference"
    if backend == "reference" and not whole:
        return "sdpa"  # the kernel runs whole sequences; query rows are exact through their masks
    return backend


def attend(q: Tensor, k: Tensor, v: Tensor, cp: CompiledPattern, layer: int, scale: float, backend: str,
           patterns: Patterns | None = None) -> Tensor:
    """Attention of ``q`` (G, H, s, d), the last ``s`` rows of ``cp``, over ``k``, ``v``
    (G, Hkv, n, d) under layer ``layer``: (G, H, s, d)."""
    chosen = choose(backend, cp, q.shape[2], q.device)
    if chosen == "reference":
        return block_sparse_attention(q, k, v, cp, layer, scale=scale)
    if chosen == "flex":
        return _flex(q, k, v, cp, layer, scale, patterns)
    return _sdpa(q, k, v, cp, layer, scale)


def _flex(q, k, v, cp: CompiledPattern, layer: int, scale: float, patterns: Patterns | None) -> Tensor:
    if q.device.type == "cuda" and any(b % CUDA_FLEX_TILE for b in cp.block):
        bq, bk = cp.block
        raise ModelError(f"FlexAttention on CUDA needs blocks that are multiples of {CUDA_FLEX_TILE} (its "
                         f"kernel tiles), got {bq}x{bk}: sparsify with block={CUDA_FLEX_TILE}, or "
                         "backend='auto'")
    block_mask = (patterns.block_mask(cp, layer, q.device) if patterns is not None
                  else cp.to_block_mask(layer, device=str(q.device)))
    extra = cp.nq - q.shape[2]  # rows the aligned query range holds before the call's own
    if extra:
        q = F.pad(q, (0, 0, extra, 0))  # (G, H, nq, d)
    flex = FLEX_ATTENTION or compiled_flex()
    out = flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out[:, :, extra:]


def row_mask(cp: CompiledPattern, layer: int, start: int, stop: int) -> np.ndarray:
    """(H, stop - start, n) bool: the rows ``start..stop-1`` of ``cp`` (row r is query
    ``cp.first_query + r``), exact, evaluated once per distinct head pattern."""
    q = np.arange(cp.first_query + start, cp.first_query + stop)[:, None]  # (r, 1)
    k = np.arange(cp.n)[None, :]  # (1, n)
    out = np.empty((cp.heads, stop - start, cp.n), bool)
    done: dict[object, np.ndarray] = {}
    for h in range(cp.heads):
        node = cp.node(layer, h)
        if node not in done:
            done[node] = cp.allows(q, k, layer, h)
        out[h] = done[node]
    return out


def _sdpa(q, k, v, cp: CompiledPattern, layer: int, scale: float) -> Tensor:
    H, s = q.shape[1], q.shape[2]
    first = cp.nq - s  # the call's rows are the last s of cp's
    step = max(1, ROW_MASK_ELEMENTS // (H * cp.n))
    outs = []
    for a in range(0, s, step):
        b = min(s, a + step)
        mask = torch.from_numpy(row_mask(cp, layer, first + a, first + b)).to(q.device)  # (H, r, n)
        has_key = mask.any(-1, keepdim=True)  # (H, r, 1)
        # a row with no allowed key is opened to every key (a finite softmax) and its output zeroed
        out = F.scaled_dot_product_attention(q[:, :, a:b], k, v, attn_mask=(mask | ~has_key)[None],
                                             scale=scale, enable_gqa=k.shape[1] != H)  # (G, H, r, d)
        outs.append(out if bool(has_key.all()) else out * has_key.to(out.dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
