"""``sparsify``: a transformers model whose attention is a patternc stack; ``densify`` undoes it.

``sparsify`` registers one attention function, ``patternc``, with transformers'
``AttentionInterface`` (and ``key_roles`` as its mask function), switches the model to it and
hangs a ``SparseAttention`` on the model and on each attention module. Each call then runs its
layer's pattern (``module.layer_idx``), head by head, compiled at the length the call meets.

While sparsified, the model's KV cache keeps every key: settings that make transformers evict keys
(``sliding_window``, ``attention_chunk_size``, sliding ``layer_types``) are switched off, since the
pattern, not the model's window, says which keys a query reads (write ``window(...)`` in the pattern
to keep one). ``densify`` restores those settings and the model's own attention exactly.

>>> model = sparsify(model, "causal & (sink(4) | window(256))")   # doctest: +SKIP
>>> model.generate(**inputs, max_new_tokens=20)                   # doctest: +SKIP
>>> densify(model)                                                # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from patternc.errors import ModelError
from patternc.hf.backends import BACKENDS, Patterns, attend
from patternc.hf.calls import key_roles, sequences
from patternc.hf.model import ModelShape, Saved, attention_modules, fit_stack, model_shape
from patternc.lang import ast
from patternc.stack import Stack

__all__ = ["NAME", "SparseAttention", "densify", "pattern_attention", "sparsified", "sparsify"]

NAME = "patternc"  # the attention implementation's name in transformers' registries
_STATE = "_patternc_attention"  # the attribute on the model and its attention modules
_PROBE_N = 4096  # sparsify compiles the stack once at min(this, the model's context) to fail early
# attention options of some models that a pattern's kernels cannot apply
_REFUSED = {"softcap": "logit soft-capping", "s_aux": "attention sinks as learned logits (s_aux)"}


@dataclass(frozen=True)
class SparseAttention:
    """What a sparsified model's attention calls share: the stack, its compiles, the backend, and
    what ``densify`` must restore."""

    stack: Stack
    shape: ModelShape
    backend: str
    patterns: Patterns
    saved: Saved

    def attend(self, layer: int, q, k, v, mask, scale: float, positions) -> torch.Tensor:
        """(B, H, S, d) attention of the queries q (B, H, S, d) over k, v (B, Hkv, T, d)."""
        B, S, T = q.shape[0], q.shape[2], k.shape[2]
        groups = sequences(mask, B, S, T, positions)
        if len(groups) == 1 and groups[0].rows is None and groups[0].key_slots is None:
            return self._run(layer, q, k, v, T, S, scale)  # no padding: the batch as it is
        out = q.new_zeros(q.shape)  # padding queries and rows of padding only get 0
        for g in groups:
            o = self._run(layer, g.gather(q, g.query_slots), g.gather(k, g.key_slots),
                          g.gather(v, g.key_slots), g.keys, g.queries, scale)  # (G, H, s, d)
            rows = range(B) if g.rows is None else g.rows.tolist()
            for i, row in enumerate(rows):
                slots = slice(None) if g.query_slots is None else g.query_slots[i].to(q.device)
                out[row, :, slots] = o[i]
        return out

    def _run(self, layer: int, q, k, v, keys: int, queries: int, scale: float) -> torch.Tensor:
        cp = self.patterns.rows(keys, queries)
        return attend(q, k, v, cp, layer, scale, self.backend, self.patterns)


def pattern_attention(module, query, key, value, attention_mask, scaling: float | None = None,
                      dropout: float = 0.0, **kwargs):
    """transformers' attention function ``patternc``: ``(module, query (B, H, S, d), key and value
    (B, Hkv, T, d), attention_mask, ...) -> (output (B, S, H, d), None)``."""
    state: SparseAttention | None = getattr(module, _STATE, None)
    layer = getattr(module, "layer_idx", None)
    if state is None:
        raise ModelError(f"{type(module).__name__} (layer {layer}) runs the '{NAME}' attention but its model "
                         "was not sparsified: call patternc.hf.sparsify(model, pattern)")
    if dropout:
        raise ModelError(f"{state.shape.name} asks for attention dropout {dropout} (it is training with "
                         "config.attention_dropout > 0): the pattern's kernels apply no dropout; set "
                         "config.attention_dropout = 0")
    for option, what in _REFUSED.items():
        if kwargs.get(option) is not None:
            raise ModelError(f"{state.shape.name} uses {what}, which the pattern's kernels do not apply: "
                             "patternc.hf cannot run this model exactly")
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    out = state.attend(layer, query, key, value, attention_mask, scale, kwargs.get("position_ids"))
    return out.transpose(1, 2).contiguous(), None  # (B, S, H, d), no attention weights


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, pattern_attention)
    AttentionMaskInterface.register(NAME, key_roles)


def sparsified(model) -> SparseAttention | None:
    """The model's ``SparseAttention`` while it is sparsified, else None."""
    return getattr(model, _STATE, None)


def sparsify(model, spec: str | os.PathLike | ast.Pattern | Stack, *,
             block: int | tuple[int, int] | None = None, params: dict[str, int | float] | None = None,
             backend: str = "auto"):
    """Run ``model``'s attention under the pattern ``spec``; returns the model (changed in place).

    ``spec``: a bare expression (every layer and head; ``l``, ``h``, ``L``, ``H`` are the model's), a
    stack file or a ``Stack`` with the model's layers and query heads. ``block`` and ``params`` as in
    ``patternc.compile``. ``backend``: ``auto``, ``reference`` (our block-sparse kernel), ``flex``
    or ``sdpa`` (see ``patternc.hf.backends``). A stack that does not fit the model, a non-causal
    stack on a causal model, or a model that does not use transformers' attention interface is a
    ``ModelError`` naming both sides. Sparsifying a sparsified model replaces its pattern.

    >>> sparsify(model, "conf/pattern/streaming_llm.yaml", params={"w": 512})   # doctest: +SKIP
    """
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    shape = model_shape(model)
    stack = fit_stack(spec, shape)
    patterns = Patterns(stack, shape, block, params)
    context = getattr(model.config, "max_position_embeddings", None) or _PROBE_N
    patterns.whole(min(_PROBE_N, context))  # a pattern that does not compile, or reads later keys
    previous = sparsified(model)
    state = SparseAttention(stack, shape, backend, patterns, previous.saved if previous else Saved.of(model))
    _register()
    for module in (model, *attention_modules(model)):
        setattr(module, _STATE, state)
    state.saved.keep_every_key(model)
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:  # transformers declined with a warning
        densify(model)
        raise ModelError(f"{shape.name} did not switch to the '{NAME}' attention: it does not route "
                         "attention through transformers' AttentionInterface")
    return model


def densify(model):
    """Give ``model`` back its own attention and cache settings, exactly as before ``sparsify``;
    returns the model.

    >>> densify(sparsify(model, "causal & window(64)"))   # doctest: +SKIP
    """
    state = sparsified(model)
    if state is None:
        raise ModelError(f"{type(model).__name__} is not sparsified: nothing to densify")
    state.saved.restore(model)
    for module in (model, *attention_modules(model)):
        if hasattr(module, _STATE):
            delattr(module, _STATE)
    return model
