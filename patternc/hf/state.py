"""What ``sparsify`` hangs on a model and on each of its attention modules: the one state that
transformers' calls, the ``patternc`` attention function and a ``PatternCache`` share.

It lives apart from ``patternc.hf.attention`` (which sets it up) and ``patternc.hf.cache`` (which
serves from it) so that each of those two imports it and neither imports the other.

- ``SparsifiedAttention``: the stack, its compiles at the lengths served, the backend, the length
  the model serves and what ``densify`` restores; ``sparsified(model)`` finds it.
- ``PendingKeys``: the keys a ``PatternCache`` hands to the attention function in place of the whole
  cache; only the ``patternc`` attention function may read them.

>>> sparsified(object()) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from patternc.errors import ModelError
from patternc.hf.backends import Patterns
from patternc.hf.calls import sequences
from patternc.hf.model import ModelShape, Saved
from patternc.kernels import attend
from patternc.stack import Stack

if TYPE_CHECKING:
    from patternc.hf.cache import PatternLayer

__all__ = ["STATE", "PendingKeys", "SparsifiedAttention", "pending", "sparsified"]

STATE = "_patternc_attention"  # the attribute on the model and its attention modules
Tensor = torch.Tensor


class PendingKeys(Tensor):
    """The keys (or values) of one ``PatternCache.update``, on their way to the ``patternc``
    attention function, which alone reads them (through ``.layer``). Any torch operation on them
    raises: another attention implementation would read them as the whole cache, and it is not."""

    layer: PatternLayer

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise ModelError(f"keys from a patternc PatternCache met {getattr(func, '__name__', func)} outside "
                         "the patternc attention function: another attention (the model's own, after "
                         "densify, or another model's), or a model that works on its keys after the cache "
                         "(differential or mixture-of-heads attention). The cache holds only the keys the "
                         "pattern reads, so only the pattern's attention can read them; start a new "
                         "generation, or pass cache=DynamicCache() to keep every key")


def pending(x: Tensor, layer: PatternLayer) -> PendingKeys:
    out = x.as_subclass(PendingKeys)
    out.layer = layer
    return out


@dataclass(frozen=True)
class SparsifiedAttention:
    """What a sparsified model's attention calls share: the stack, its compiles, the backend, the
    length the model serves, and what ``densify`` must restore."""

    stack: Stack
    shape: ModelShape
    backend: str
    patterns: Patterns
    saved: Saved
    max_length: int | None = None  # declared by sparsify: the length every call is served at
    generations: list = field(default_factory=list)  # generate() calls in progress: their lengths
    verdicts: dict = field(default_factory=dict)  # what was found by running the model (cache_refusal)

    def serving(self, keys: int, continues_cache: bool) -> int:
        """The length a call that meets ``keys`` tokens is served at (see the module docstring)."""
        running = self.generations[-1] if self.generations else None
        served = self.max_length if self.max_length is not None else running
        if served is None:
            if continues_cache and self.stack.reads_length():
                raise ModelError(f"this call continues a cache to {keys:,} tokens, and the pattern's rows "
                                 f"depend on n ({self.stack.default}): say the length the model serves with "
                                 "sparsify(..., max_length=...), or use generate(), which serves the prompt "
                                 "plus max_new_tokens")
            return keys
        if keys > served:
            raise ModelError(f"a sequence of {keys:,} tokens is longer than the {served:,} the model serves "
                             f"({'max_length in sparsify' if self.max_length else 'this generation'})")
        return served

    def attend(self, layer: int, q, k, v, mask, scale: float, positions) -> torch.Tensor:
        """(B, H, S, d) attention of the queries q (B, H, S, d) over k, v (B, Hkv, T, d)."""
        if isinstance(k, PendingKeys):  # a PatternCache's call: it holds the keys
            return k.layer.attend(self, q, mask, scale)
        B, S, T = q.shape[0], q.shape[2], k.shape[2]
        groups = sequences(mask, B, S, T, positions)
        if len(groups) == 1 and groups[0].rows is None and groups[0].key_slots is None:
            return self.run(layer, q, k, v, T, S, scale)  # no padding: the batch as it is
        out = q.new_zeros(q.shape)  # padding queries and rows of padding only get 0
        for g in groups:
            o = self.run(layer, g.gather(q, g.query_slots), g.gather(k, g.key_slots),
                         g.gather(v, g.key_slots), g.keys, g.queries, scale)  # (G, H, s, d)
            rows = range(B) if g.rows is None else g.rows.tolist()
            for i, row in enumerate(rows):
                slots = slice(None) if g.query_slots is None else g.query_slots[i].to(q.device)
                out[row, :, slots] = o[i]
        return out

    def run(self, layer: int, q, k, v, keys: int, queries: int, scale: float, served: int | None = None
            ) -> torch.Tensor:
        """The last ``queries`` of ``keys`` tokens, q (G, H, queries, d) over k, v (G, Hkv, keys, d)."""
        served = self.serving(keys, queries < keys) if served is None else served
        cp = self.patterns.rows(served, keys, queries)
        return attend(q, k, v, cp, layer, scale=scale, backend=self.backend)


def sparsified(model) -> SparsifiedAttention | None:
    """The model's ``SparsifiedAttention`` while it is sparsified, else None."""
    return getattr(model, STATE, None)
