"""The token mask of one call of the block-sparse kernel, built once per distinct run content.

A run of key blocks that holds PARTIAL blocks needs the pattern's token predicate on its pairs.
``CallMask`` carries it two ways, built together: ``allowed`` (bool) for the paths that select
scores (``where`` / ``masked_fill``), and ``additive`` (0 or -inf, in the working dtype) for SDPA's
fused kernel, which only takes an additive mask. Key columns that no query of the run may see are
cut off (``sink(64)`` in a block of 128 reads 64 keys, unmasked), and the queries with no allowed
key in the run are listed, so that the caller can give them nothing. A gathered run (``Segment.gather``)
keeps exactly the key columns some query sees (``columns``), wherever they lie: the keys it copies.

>>> import torch
>>> from patternc.kernels.plan import segments
>>> cp = patternc.compile("sink(64)", n=256, block=128)
>>> (call,) = segments(cp, 0, 0, max_blocks=64).segments  # both rows read key block 0
>>> masks = mask_cache(cp, layer=0, head=0, device=torch.device("cpu"), dtype=torch.float32)
>>> m = masks.get(call.kinds, call.q_len, call.k_len, tiles=1)
>>> m.k_skip, m.k_len, m.allowed  # the block's first 64 keys, every pair among them allowed: no mask
(0, 64, None)
>>> cp = patternc.compile("causal & window(4) - diagonals([0])", n=64, block=16)  # query 0 sees no key
>>> call = next(s for s in segments(cp, 0, 0, max_blocks=64).segments if s.row0 == 0)  # block row 0
>>> mask_cache(cp, 0, 0, torch.device("cpu"), torch.float32).get(call.kinds, call.q_len, call.k_len, 1).dead
tensor([0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from patternc.compiled import per_pattern
from patternc.kernels.plan import partial_kinds

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["CallMask", "MaskCache", "mask_cache"]


@dataclass(frozen=True, slots=True)
class CallMask:
    """What a run's content asks of its call: keys ``[k_skip, k_skip + k_len)`` of the run, the
    pairs allowed among them (None when all are) and the queries with no allowed key."""

    allowed: torch.Tensor | None  # (tiles * q_len, k_len) bool
    additive: torch.Tensor | None  # the same as 0 / -inf in the working dtype, for SDPA's kernel
    dead: torch.Tensor | None  # (m,) query positions with no allowed key, or None
    k_skip: int
    k_len: int
    columns: torch.Tensor | None = None  # gathered runs: (k_len,) the run's key columns kept, int64

    @property
    def allowed_t(self) -> torch.Tensor | None:
        """``allowed`` with keys first: (k_len, tiles * q_len), for gradients of keys and values."""
        return None if self.allowed is None else self.allowed.transpose(0, 1)


class MaskCache:
    """Each distinct run content's ``CallMask``, built on first use and kept with the layout
    (``mask_cache``); ``tiles`` rows folded into one query run repeat the mask."""

    def __init__(self, cp: CompiledPattern, layer: int, head: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.kind_masks = _device_masks(cp, layer, head, str(device))  # (u, bq, bk) bool
        self.dtype = dtype
        self.built: dict[tuple, CallMask | torch.Tensor] = {}

    def get(self, kinds: tuple[int, ...] | None, q_len: int, k_len: int, tiles: int,
            gathered: bool = False) -> CallMask:
        if kinds is None:
            return CallMask(None, None, None, 0, k_len)
        key = (kinds, q_len, k_len, tiles, gathered)
        if key not in self.built:
            self.built[key] = self._build(kinds, q_len, k_len, tiles, gathered)
        return self.built[key]

    def gather_index(self, ranges: tuple[tuple[int, int], ...], kinds: tuple[int, ...] | None,
                     q_len: int) -> torch.Tensor:
        """(k_len,) int64: the key tokens a gathered run over ``ranges`` reads (the columns its mask
        keeps), on the masks' device."""
        key = ("gather", ranges, kinds, q_len)
        if key not in self.built:
            tokens = torch.cat([torch.arange(start, end) for start, end in ranges]).to(self.kind_masks.device)
            columns = self.get(kinds, q_len, len(tokens), 1, gathered=True).columns
            self.built[key] = tokens if columns is None else tokens[columns]
        return self.built[key]

    def _build(self, kinds, q_len, k_len, tiles, gathered) -> CallMask:
        ids = torch.tensor(kinds, device=self.kind_masks.device)  # (c,)
        allowed = self.kind_masks[ids.clamp(min=0)]  # (c, bq, bk)
        allowed[ids < 0] = True
        allowed = allowed.transpose(0, 1).reshape(allowed.shape[1], -1)[:q_len, :k_len]  # (q_len, k_len)
        seen = torch.nonzero(allowed.any(0)).flatten()  # never empty: a PARTIAL block allows a pair
        columns = None
        if gathered:  # every unseen column is left out, not only those before and after the seen
            skip, end, columns = 0, len(seen), seen
            allowed = allowed[:, seen]
        else:
            skip, end = int(seen[0]), int(seen[-1]) + 1
            allowed = allowed[:, skip:end]
        if bool(allowed.all()):
            return CallMask(None, None, None, skip, end - skip, columns)
        allowed = allowed.repeat(tiles, 1).contiguous()  # (tiles * q_len, k_len)
        additive = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        additive.masked_fill_(~allowed, -math.inf)
        dead = torch.nonzero(~allowed.any(-1)).flatten()
        return CallMask(allowed, additive, dead if len(dead) else None, skip, end - skip, columns)


@per_pattern
def mask_cache(cp: CompiledPattern, layer: int, head: int, device: torch.device,
               dtype: torch.dtype) -> MaskCache:
    """The ``MaskCache`` of one layout, device and dtype, shared by every call of the kernel (a
    training loop builds each mask once, not once per step)."""
    return MaskCache(cp, layer, head, device, dtype)


@per_pattern
def _device_masks(cp, layer, head, device: str) -> torch.Tensor:
    """``plan.partial_kinds``' distinct block masks on ``device``, cached per layout."""
    return torch.from_numpy(partial_kinds(cp, layer, head)[1]).to(device)
