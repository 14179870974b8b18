"""SDPA with the exact boolean mask of a pattern's rows: the ``sdpa`` backend of ``attend``, and
the one masked dense call that ``dense_path`` weighs the block walk against.

A row's mask is evaluated once per distinct head pattern (``row_mask``); the last rows of a
sequence in one slice (a training loop's every step) keep theirs with the compiled pattern. A row
with no allowed key is opened to every key, so that its softmax is finite, and its output zeroed.

>>> import numpy as np, torch
>>> cp = patternc.compile("causal & window(4)", n=16, block=4)
>>> q = k = v = torch.randn(1, 1, 16, 8, generator=torch.Generator().manual_seed(0))  # (B, H, n, d)
>>> out = masked_sdpa(q[:, :, -2:], k, v, cp, 0, None, np.array([14, 15]))  # the last two rows
>>> out.shape
torch.Size([1, 1, 2, 8])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["ROW_MASK_ELEMENTS", "masked_sdpa", "row_mask"]

ROW_MASK_ELEMENTS = 1 << 24  # booleans of one SDPA call's mask (16 MiB): larger row sets go in slices

Tensor = torch.Tensor


def row_mask(cp: CompiledPattern, layer: int, positions: np.ndarray) -> np.ndarray:
    """(H, r, n) bool: what the queries at ``positions`` (r,) read in ``cp``'s layer ``layer``,
    exact, evaluated once per distinct head pattern."""
    q = np.asarray(positions, np.int64)[:, None]  # (r, 1)
    k = np.arange(cp.n)[None, :]  # (1, n)
    out = np.empty((cp.heads, len(q), cp.n), bool)
    done: dict[object, np.ndarray] = {}
    for h in range(cp.heads):
        node = cp.node(layer, h)
        if node not in done:
            done[node] = cp.allows(q, k, layer, h)
        out[h] = done[node]
    return out


def _row_masks(cp: CompiledPattern, layer: int, positions: np.ndarray, device: torch.device, whole: bool
               ) -> tuple[Tensor, Tensor]:
    """(H, r, n) bool and (H, r, 1) bool (the row has a key) for the queries at ``positions``; kept
    with ``cp`` when they are its last rows in one slice (a training loop's every step)."""
    def build() -> tuple[Tensor, Tensor]:
        mask = torch.from_numpy(row_mask(cp, layer, positions)).to(device)
        return mask, mask.any(-1, keepdim=True)

    last = whole and len(positions) and positions[-1] == cp.n - 1 \
        and positions[-1] - positions[0] == len(positions) - 1
    if not last:
        return build()
    return cp.derived(("sdpa_rows", layer, str(device), int(positions[0])), build)


def masked_sdpa(q: Tensor, k: Tensor, v: Tensor, cp: CompiledPattern, layer: int, scale: float | None,
                positions: np.ndarray) -> Tensor:
    """SDPA of the queries ``q`` (B, H, r, d) at ``positions`` (r,) over ``k``, ``v`` (B, Hkv, n, d) with
    their rows' exact masks, in slices of at most ``ROW_MASK_ELEMENTS`` booleans: (B, H, r, d)."""
    H, r = q.shape[1], q.shape[2]
    step = max(1, ROW_MASK_ELEMENTS // (cp.heads * cp.n))  # the mask is (cp.heads, rows, n): one head
    # for a one-head pattern, whatever q's heads
    outs = []
    for a in range(0, r, step):
        b = min(r, a + step)
        mask, has_key = _row_masks(cp, layer, positions[a:b], q.device, whole=step >= r)
        # a row with no allowed key is opened to every key (a finite softmax) and its output zeroed
        out = F.scaled_dot_product_attention(q[:, :, a:b], k, v, attn_mask=(mask | ~has_key)[None],
                                             scale=scale, enable_gqa=k.shape[1] != H)  # (B, H, r', d)
        outs.append(out if bool(has_key.all()) else out * has_key.to(out.dtype))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
