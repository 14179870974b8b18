"""``PatternCache``: a transformers cache that holds what a sparsified model's pattern reads.

A sparsified model's ``generate()`` uses it by default. Each layer keeps, per KV head, only the
keys some later query still reads (``patternc.kernels.decode.DecodeCache``, on ``patternc.kv``'s
schedule, in pages of ``page`` tokens), at their absolute positions: sinks, global tokens,
strides and a window are not one contiguous range, and keys are cached after the rotary embedding,
so nothing is re-rotated. A decode step reads only the held keys its row allows.

How a call flows: the attention module hands its new keys and values to ``update``, which keeps
them pending and returns ``PendingKeys``, a token only the ``patternc`` attention function reads
(any other attention implementation that meets it raises, since the cache does not hold every
key). The attention function then calls ``PatternLayer.attend``: the first tokens of a sequence
are computed as a whole sequence by the pattern's block-sparse kernel and written keeping only
what later queries read; later calls (the next chunk of a chunked prefill, a decode step) append
their keys, evicting what no query from there on reads, and attend over what is held. A batch with
left padding keeps one cache per padding length: the pattern applies to each sequence's own
tokens, as ``patternc.hf.calls`` says.

The cache serves ``max_length`` tokens: the pattern is compiled at that length (row ``t`` reads
what it reads in the pattern at ``n = max_length``), and a longer sequence is refused.

>>> model = patternc.hf.sparsify(model, "causal & (sink(4) | window(512))")        # doctest: +SKIP
>>> out = model.generate(ids, max_new_tokens=32, return_dict_in_generate=True)    # doctest: +SKIP
>>> out.cache.memory().held_keys          # per layer and KV head, about 516 each  # doctest: +SKIP
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from patternc.errors import ModelError, check_int
from patternc.hf.calls import KEY, KeyRoles
from patternc.hf.state import SparsifiedAttention, pending, sparsified
from patternc.kernels.decode import PAGE, DecodeCache

if TYPE_CHECKING:
    from patternc.kv_analysis import KVReport

__all__ = ["CacheMemory", "PatternCache", "PatternLayer", "cache_refusal"]

Tensor = torch.Tensor


@dataclass(frozen=True, slots=True)
class CacheMemory:
    """What a ``PatternCache`` holds, per layer and KV head, beside what ``patternc.kv`` predicts for
    the same stack and length (its ``KVReport``): keys held now (whole pages), the most held at
    once, keys written and no longer held, and bytes (held now, and allocated)."""

    held_keys: tuple[tuple[int, ...], ...]
    peak_keys: tuple[tuple[int, ...], ...]
    evicted_keys: tuple[tuple[int, ...], ...]
    predicted_keys: tuple[tuple[int, ...], ...]  # patternc.kv's max_live_keys
    held_bytes: int
    allocated_bytes: int
    dense_bytes: int  # every key of the sequences so far, as a dense cache holds them

    @property
    def ratio(self) -> float:
        """Bytes held now against a dense cache of the same tokens."""
        return self.held_bytes / self.dense_bytes if self.dense_bytes else 0.0


class PatternCache(Cache):
    """The KV cache of a sparsified ``model`` that serves ``max_length`` tokens (see the module
    docstring). ``page``: tokens per page (16, as vLLM's blocks).

    >>> cache = PatternCache(model, max_length=4096)                                  # doctest: +SKIP
    >>> model.generate(ids, max_new_tokens=64, cache=cache)                          # doctest: +SKIP
    """

    def __init__(self, model, max_length: int, *, page: int = PAGE) -> None:
        from patternc.kv_analysis import kv

        state = sparsified(model)
        if state is None:
            raise ModelError(f"{type(model).__name__} is not sparsified: a PatternCache holds what a pattern "
                             "reads; call patternc.hf.sparsify(model, pattern) first")
        if not state.shape.causal:
            raise ModelError(f"{state.shape.name} is not a causal model: a KV cache serves a decoder")
        for name, value in (("max_length", max_length), ("page", page)):
            check_int(value, f"PatternCache: {name}", error=ModelError)
        if state.max_length is not None and max_length > state.max_length:
            raise ModelError(f"PatternCache: max_length {max_length:,} is longer than the max_length "
                             f"{state.max_length:,} that sparsify declared")
        self.state, self.max_length, self.page = state, max_length, page
        self._model = weakref.ref(model)
        self.pattern = state.patterns.whole(max_length)  # every row at the length served
        shape = state.shape
        self.report: KVReport = kv(self.pattern, kv_heads=shape.kv_heads, head_dim=shape.head_dim,
                                   dtype="float32")
        super().__init__(layers=[PatternLayer(self, layer) for layer in range(shape.layers)])

    def check(self, model, length: int) -> None:
        """Refuse, naming both sides, to serve ``length`` tokens of ``model`` from this cache."""

        own = self._model()
        if own is not model:
            shape = self.state.shape
            raise ModelError(f"this PatternCache was made for another model ({shape.name}: {shape.layers} "
                             f"layers, {shape.kv_heads} KV heads of {shape.head_dim}); make one for "
                             f"{type(model).__name__} with PatternCache(model, max_length)")
        if sparsified(model) is not self.state:
            raise ModelError(f"{type(model).__name__} was densified or sparsified again since this "
                             "PatternCache was made for its pattern: make a new one")
        if length > self.max_length:
            raise ModelError(f"a generation of {length:,} tokens does not fit this PatternCache, which "
                             f"serves max_length = {self.max_length:,}")

    def memory(self) -> CacheMemory:
        """Keys and bytes held per layer and KV head, beside ``patternc.kv``'s prediction."""
        per_layer = [layer.counts() for layer in self.layers]
        held, peak, evicted = (tuple(tuple(row[i]) for row in per_layer) for i in range(3))
        shape = self.state.shape
        tokens = sum(layer.tokens() for layer in self.layers)
        element = next((layer.element_size() for layer in self.layers if layer.element_size()), 4)
        return CacheMemory(held, peak, evicted, self.report.max_live_keys,
                           held_bytes=sum(layer.held_bytes() for layer in self.layers),
                           allocated_bytes=sum(layer.allocated_bytes() for layer in self.layers),
                           dense_bytes=tokens * shape.kv_heads * 2 * shape.head_dim * element)


def cache_refusal(model, max_length: int) -> str | None:
    """Why a ``PatternCache`` cannot serve this sparsified model, or None when it can.

    Whether it can is a property of the model's code, not of its config: the cache serves a model
    whose attention modules hand their keys and values, as they attend over them, to the cache and
    then to the attention function. Latent caches (multi-head latent attention caches a compressed
    state), keys worked on after the cache (differential attention, mixture-of-heads), and
    state-space layers that keep their state in the cache (hybrid models) are not served. So it is
    found by running the model: two one-token steps on a throwaway cache, with the random state
    kept as it was. The verdict is kept with the sparsified model.
    """

    state = sparsified(model)
    if "cache" not in state.verdicts:
        probe = PatternCache(model, max_length)
        token = torch.zeros((1, 1), dtype=torch.long, device=model.device)
        devices = [model.device] if model.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                for _ in range(2):
                    model(input_ids=token, cache=probe, use_cache=True)
            state.verdicts["cache"] = None
        except Exception as error:  # any failure: the model's code is not one the cache serves
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            state.verdicts["cache"] = f"{type(error).__name__}: {first[:300]}"
    return state.verdicts["cache"]


class PatternLayer(CacheLayerMixin):
    """One layer of a ``PatternCache``: a ``DecodeCache`` per padding length of the batch."""

    is_sliding = False
    is_compileable = False
    is_croppable = False
    supports_early_init = False

    def __init__(self, cache: PatternCache, layer: int) -> None:
        super().__init__()
        self.cache, self.layer = cache, layer
        self.slots = 0  # key slots transformers has written, padding included
        self.rows: list[int | None] = []  # per batch row, its first real slot (None: no real token yet)
        self.caches: dict[int, DecodeCache] = {}  # first real slot -> the cache of the rows that share it
        self._pending: tuple[Tensor, Tensor] | None = None

    # ---- transformers' cache-layer interface -------------------------------------------------------

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.rows = [None] * key_states.shape[0]
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """Keep the call's keys and values (B, Hkv, s, d) until its attention reads them."""
        model = self.cache._model()
        if model is None:
            raise ModelError("the model this PatternCache was made for no longer exists")
        self.cache.check(model, self.slots + key_states.shape[2])
        shape = self.cache.state.shape
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        B, H, s, d = key_states.shape
        expected = (len(self.rows), shape.kv_heads, shape.head_dim)
        if (B, H, d) != expected or value_states.shape != key_states.shape:
            raise ModelError(f"PatternCache layer {self.layer}: keys of shape {tuple(key_states.shape)} and "
                             f"values {tuple(value_states.shape)}, but the cache holds batch "
                             f"{len(self.rows)} x "
                             f"{shape.kv_heads} KV heads x head_dim {shape.head_dim}")
        if self._pending is not None:
            raise ModelError(f"PatternCache layer {self.layer} was updated twice before its attention ran: "
                             f"a model that writes the cache without attending is not one patternc.hf runs")
        self._pending = (key_states, value_states)
        self.slots += s
        return pending(key_states, self), pending(value_states, self)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.slots + query_length, 0

    def get_seq_length(self) -> int:
        return self.slots

    def get_max_length(self) -> int:
        return -1  # it grows as a dynamic cache does, up to the length the pattern serves

    def reset(self) -> None:
        self.slots, self.rows, self.caches, self._pending = 0, [], {}, None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        raise ModelError("a PatternCache cannot be cropped: it has evicted what the pattern no longer reads, "
                         "so it cannot roll back (assisted generation, contrastive search); pass "
                         "cache=DynamicCache() to keep every key")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(beam_idx.tolist())

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._select([row for row in range(len(self.rows)) for _ in range(repeats)])

    def batch_select_indices(self, indices: Tensor) -> None:
        self._select(torch.as_tensor(indices).tolist())

    def offload(self) -> None:
        raise ModelError("a PatternCache is not offloaded: it holds only what the pattern reads")

    prefetch = offload

    # ---- attention ---------------------------------------------------------------------------------

    def attend(self, state: SparsifiedAttention, q: Tensor, mask, scale: float) -> Tensor:
        """(B, H, S, d): the attention of the call whose keys ``update`` holds, for queries q."""
        if self._pending is None:
            raise ModelError(f"PatternCache layer {self.layer}: attention ran without a cache update")
        k, v = self._pending
        self._pending = None
        if state is not self.cache.state:
            raise ModelError("this PatternCache was made for another pattern of the model: make a new one")
        B, S = q.shape[0], q.shape[2]
        firsts = self._first_real_slots(mask, B, self.slots)
        out = None  # (B, H, S, d), made when the call has padding (a padding query gets 0)
        by_first: dict[int, list[int]] = {}
        for row, first in enumerate(firsts):
            if first is not None:
                by_first.setdefault(first, []).append(row)
        for first, rows in by_first.items():
            s = self.slots - max(first, self.slots - S)  # the rows' real tokens in this call
            whole = len(rows) == B and s == S  # every row, no padding in the call: no copies
            index = torch.tensor(rows, device=q.device)
            q_g, k_g, v_g = (x if whole else x.index_select(0, index.to(x.device))[:, :, S - s:]
                             for x in (q, k, v))
            cache = self.caches.get(first)
            if cache is None:  # their first tokens: a whole sequence, through the block-sparse kernel
                cache = self.caches[first] = self._new_cache(len(rows))
                o = state.run(self.layer, q_g, k_g, v_g, keys=s, queries=s, scale=scale,
                              served=self.cache.max_length)
                cache.prefill(k_g, v_g)
            else:
                cache.append(k_g, v_g)
                o = cache.attend(q_g, scale=scale)
            if whole:
                return o
            out = q.new_zeros(q.shape) if out is None else out
            out[index, :, S - s:] = o
        return q.new_zeros(q.shape) if out is None else out

    def _first_real_slots(self, mask, batch: int, slots: int) -> list[int | None]:
        """Per batch row, its first real key slot: where its left padding ends. Real slots must run
        from there to the end (left padding only), and a row's first real slot never moves."""
        if mask is None:
            firsts = [0] * batch
        elif isinstance(mask, KeyRoles):
            real = (mask.as_subclass(Tensor)[:, 0, 0, :] & KEY).bool().cpu()  # (B, T)
            if real.shape != (batch, slots):
                raise ModelError(f"PatternCache layer {self.layer}: the attention mask covers "
                                 f"{real.shape[1]} key slots, the cache {slots}")
            firsts = []
            for row in range(batch):
                found = torch.nonzero(real[row]).flatten()
                first = int(found[0]) if len(found) else None
                if first is not None and len(found) != slots - first:
                    raise ModelError(f"batch row {row} has padding after a real token: a PatternCache takes "
                                     "left padding only (generate() pads on the left)")
                firsts.append(first)
        else:
            shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ModelError("a PatternCache takes a padding mask (batch, tokens) as attention_mask, "
                             f"got {shape}")
        for row, (had, has) in enumerate(zip(self.rows, firsts, strict=True)):
            if had is not None and had != has:
                raise ModelError(f"batch row {row}'s tokens moved: its first real token was slot {had}, now "
                                 f"{has}; a cache continues the sequences it began")
        self.rows = firsts
        return firsts

    def _new_cache(self, batch: int) -> DecodeCache:
        cache, shape = self.cache, self.cache.state.shape
        return DecodeCache(cache.pattern, self.layer, batch=batch, kv_heads=shape.kv_heads,
                           head_dim=shape.head_dim, dtype=self.dtype, device=self.device, page=cache.page,
                           report=cache.report)

    def _select(self, sources: list[int]) -> None:
        """Row ``i`` becomes the old row ``sources[i]`` (beam search's reorder, repeats, selection)."""
        if not self.is_initialized:
            return
        members = {first: [r for r, f in enumerate(self.rows) if f == first] for first in self.caches}
        for first, cache in list(self.caches.items()):
            local = [members[first].index(src) for src in sources if self.rows[src] == first]
            if local:
                cache.select(torch.tensor(local))
            else:
                del self.caches[first]
        self.rows = [self.rows[src] for src in sources]

    # ---- what is held ------------------------------------------------------------------------------

    def counts(self) -> tuple[list[int], list[int], list[int]]:
        """Per KV head: keys held now, the most held at once, keys no longer held; over the sequences
        of the batch, the largest (each sequence holds its own)."""
        heads = range(self.cache.state.shape.kv_heads)
        caches = list(self.caches.values())

        def most(f) -> list[int]:
            return [max((f(c, g) for c in caches), default=0) for g in heads]

        return (most(lambda c, g: c.held_keys(g)), most(lambda c, g: c.peak_keys(g)),
                most(lambda c, g: c.evicted_keys(g)))

    def tokens(self) -> int:
        return sum(c.length * c.batch for c in self.caches.values())

    def held_bytes(self) -> int:
        return sum(c.held_bytes for c in self.caches.values())

    def allocated_bytes(self) -> int:
        return sum(c.bytes for c in self.caches.values())

    def element_size(self) -> int:
        return self.dtype.itemsize if self.is_initialized else 0

