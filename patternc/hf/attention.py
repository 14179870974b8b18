"""``sparsify``: a transformers model whose attention is a patternc stack; ``densify`` undoes it.

``sparsify`` registers one attention function, ``patternc``, with transformers'
``AttentionInterface`` (and ``key_roles`` as its mask function), switches the model to it and
hangs a ``SparsifiedAttention`` on the model and on each attention module. Each call then runs its
layer's pattern (``module.layer_idx``), head by head. The pattern, not the model's own window,
decides which keys a query reads: a model's ``sliding_window`` or chunked layers give way to it
(write ``window(...)`` in the pattern to keep one). The model's config is not changed.

What row ``t`` reads in a decoder is defined once: the row ``t`` of the stack compiled at the
length the model serves (``Patterns``), whatever follows it. That length is ``max_length`` when
``sparsify`` declares one; else, inside ``generate()``, the generation's total length (prompt plus
``max_new_tokens``); else the length of the call, a whole sequence. So ``use_cache=True`` and
``use_cache=False`` generate the same tokens, for ``window(n // 4)`` and ``random()`` too. A call
that continues a cache with neither (a hand-written decoding loop) is refused for a pattern whose
rows depend on ``n``.

``generate()`` keeps what the pattern reads and no more: unless it is given a cache, it uses a
``PatternCache`` (``patternc.hf.cache``) sized by ``patternc.kv``'s schedule, and prefills the
prompt in chunks of ``PREFILL_CHUNK`` tokens, so a long prompt under a window needs memory that
grows with the window, not with the prompt. A cache given to ``generate()`` (``DynamicCache()``)
or a static one keeps every key, and the pattern still decides what each query reads.

>>> model = sparsify(model, "causal & (sink(4) | window(256))")   # doctest: +SKIP
>>> model.generate(**inputs, max_new_tokens=20)                   # doctest: +SKIP
>>> densify(model)                                                # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings

from patternc.errors import ModelError, brief, check_int
from patternc.hf.backends import Patterns
from patternc.hf.cache import PatternCache, cache_refusal
from patternc.hf.calls import key_roles
from patternc.hf.model import (
    REFUSED_ARGUMENTS,
    Saved,
    attention_modules,
    cross_attention_modules,
    fit_stack,
    model_shape,
)
from patternc.hf.state import STATE, SparsifiedAttention, sparsified
from patternc.kernels import backend_name
from patternc.lang import ast
from patternc.limits import MAX_N
from patternc.stack import Stack

__all__ = ["NAME", "PREFILL_CHUNK", "densify", "pattern_attention", "sparsify"]

NAME = "patternc"  # the attention implementation's name in transformers' registries
PREFILL_CHUNK = 2048  # generate()'s prompt chunks with a PatternCache: the held keys plus 2,048 new ones
_CROSS = "_patternc_cross_attention"  # on cross-attention modules: the model's name, for the refusal
_PROBE_N = 4096  # sparsify compiles the stack once at min(this, the model's context) to fail early
_HOOKS = ("generate", "_prepare_cache_for_generation")  # instance attributes sparsify sets
# Attention arguments whose values never change what the pattern computes: the pattern replaces the
# model's own window and causality, position ids are checked, the rest is bookkeeping.
_IGNORED = frozenset({"sliding_window", "is_causal", "position_ids", "use_cache", "cache_position",
                      "output_hidden_states", "output_router_logits", "num_items_in_batch", "return_dict",
                      "layer_idx", "cache", "past_key_values", "position_embeddings"})
_PACKED = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")


def pattern_attention(module, query, key, value, attention_mask, scaling: float | None = None,
                      dropout: float = 0.0, **kwargs):
    """transformers' attention function ``patternc``: ``(module, query (B, H, S, d), key and value
    (B, Hkv, T, d), attention_mask, ...) -> (output (B, S, H, d), None)``. An argument that would
    change the result and that a pattern's kernels do not apply is refused, naming it."""
    state: SparsifiedAttention | None = getattr(module, STATE, None)
    layer = getattr(module, "layer_idx", None)
    if state is None and getattr(module, _CROSS, None):
        raise ModelError(f"{getattr(module, _CROSS)}'s {type(module).__name__} (layer {layer}) attends to an "
                         "encoder's states (cross-attention), whose keys are not the model's tokens: a "
                         "pattern describes self-attention only; call the sparsified model without "
                         "encoder_hidden_states, or densify it")
    if state is None:
        raise ModelError(f"{type(module).__name__} (layer {layer}) runs the '{NAME}' attention but its model "
                         "was not sparsified: call patternc.hf.sparsify(model, pattern)")
    if dropout:
        raise ModelError(f"{state.shape.name} asks for attention dropout {dropout} (it is training with "
                         "config.attention_dropout > 0): the pattern's kernels apply no dropout; set "
                         "config.attention_dropout = 0")
    _check_arguments(state.shape.name, kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    out = state.attend(layer, query, key, value, attention_mask, scale, kwargs.get("position_ids"))
    return out.transpose(1, 2).contiguous(), None  # (B, S, H, d), no attention weights


def _check_arguments(name: str, kwargs: dict) -> None:
    """Refuse an attention argument that changes the result and that the pattern does not apply."""
    for option, value in kwargs.items():
        if option in _IGNORED or value is None or value is False:
            continue
        if option in REFUSED_ARGUMENTS:
            raise ModelError(f"{name} passes {option}= to its attention: {REFUSED_ARGUMENTS[option]}, which "
                             "a pattern's kernels do not apply: patternc.hf cannot run this model exactly")
        if option in _PACKED:
            raise ModelError(f"{name} passes {option}= to its attention (packed sequences, as "
                             "flash-attention's "
                             "varlen kernels take them): a pattern applies to one sequence per row; pass the "
                             "sequences as separate rows, with padding")
        if option == "output_attentions":
            raise ModelError(f"{name} is asked for its attention weights (output_attentions=True): the "
                             "pattern's kernels never form them; ask without output_attentions")
        raise ModelError(f"{name} passes {option}={brief(value)} to its attention, which patternc.hf does "
                         "not know: it cannot promise to run the model exactly, so it refuses")


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(NAME, pattern_attention)
    AttentionMaskInterface.register(NAME, key_roles)


def sparsify(model, spec: str | os.PathLike | ast.Pattern | Stack, *,
             block: int | tuple[int, int] | None = None, params: dict[str, int | float] | None = None,
             backend: str = "auto", max_length: int | None = None):
    """Run ``model``'s attention under the pattern ``spec``; returns the model (changed in place).

    ``spec``: a bare expression (every layer and head; ``l``, ``h``, ``L``, ``H`` are the model's), a
    stack file or a ``Stack`` with the model's layers and query heads. ``block`` and ``params`` as in
    ``patternc.compile``. ``backend``: ``auto``, ``kernel`` (our block-sparse kernel), ``flex``
    or ``sdpa`` (see ``patternc.kernels.dispatch``). ``max_length``: the length a decoder serves, at which
    every call's rows are taken (see the module docstring); longer sequences are refused. A stack that
    does not fit the model, a non-causal stack on a causal model, or a model whose attention a pattern
    cannot run exactly is a ``ModelError`` naming both sides. Sparsifying a sparsified model replaces
    its pattern.

    >>> sparsify(model, "conf/pattern/streaming_llm.yaml", params={"w": 512})   # doctest: +SKIP
    """
    backend = backend_name(backend, "sparsify's backend")
    shape = model_shape(model)
    if max_length is not None:
        max_length = check_int(max_length, "max_length", high=MAX_N, error=ModelError)
        if not shape.causal:
            raise ModelError(f"{shape.name} is not a causal model: it reads its whole input at once, so it "
                             "serves no length but the input's (max_length is a decoder's)")
    stack = fit_stack(spec, shape)
    patterns = Patterns(stack, shape, block, params)
    context = getattr(model.config, "max_position_embeddings", None) or _PROBE_N
    # a pattern that does not compile, or reads later keys
    patterns.whole(max_length or min(_PROBE_N, context))
    previous = sparsified(model)
    saved = previous.saved if previous else Saved.of(model, _HOOKS)
    state = SparsifiedAttention(stack, shape, backend, patterns, saved, max_length)
    _register()
    for module in (model, *attention_modules(model)):
        setattr(module, STATE, state)
    for module in cross_attention_modules(model):
        setattr(module, _CROSS, shape.name)
    _hook_generation(model, state)
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:  # transformers declined with a warning
        densify(model)
        raise ModelError(f"{shape.name} did not switch to the '{NAME}' attention: it does not route "
                         "attention through transformers' AttentionInterface")
    return model


def _hook_generation(model, state: SparsifiedAttention) -> None:
    """Give the model's ``generate()`` the length it serves, and a ``PatternCache`` by default."""
    cls = type(model)

    def generate(*args, **kwargs):
        state.generations.append(None)  # set once generate() knows its length (below)
        try:
            return cls.generate(model, *args, **kwargs)
        finally:
            state.generations.pop()

    def prepare_cache(generation_config, model_kwargs, generation_mode, batch_size, max_cache_length):
        length = max_cache_length + 1  # the prompt and every new token
        if state.max_length is not None and length > state.max_length:
            raise ModelError(f"a generation of {length:,} tokens (prompt and max_new_tokens) is longer than "
                             f"max_length = {state.max_length:,}, declared in sparsify")
        if state.generations:
            state.generations[-1] = length
        served = state.max_length or length
        own = model_kwargs.get("cache")
        if isinstance(own, PatternCache):
            own.check(model, length)
            refusal = cache_refusal(model, served)
            if refusal:
                raise ModelError(f"a PatternCache cannot serve {state.shape.name} ({refusal}); generate "
                                 "without cache=, and the model's own cache keeps every key")
            if generation_config.prefill_chunk_size is None:  # this generation's copy of the config
                generation_config.prefill_chunk_size = PREFILL_CHUNK
        elif own is None and generation_config.use_cache is not False \
                and generation_config.cache_implementation in (None, "dynamic"):
            refusal = cache_refusal(model, served)
            if refusal is None:
                model_kwargs["cache"] = PatternCache(model, served)
                if generation_config.prefill_chunk_size is None:  # this generation's copy of the config
                    generation_config.prefill_chunk_size = PREFILL_CHUNK
                return None
            warnings.warn(f"patternc: a PatternCache cannot serve {state.shape.name} ({refusal}), so "
                          "generate() keeps every key in the model's own cache: the pattern still decides "
                          "what each query reads, but the KV memory is dense", stacklevel=4)
        return cls._prepare_cache_for_generation(model, generation_config, model_kwargs, generation_mode,
                                                 batch_size, max_cache_length)

    if hasattr(cls, "generate"):  # a masked LM, an encoder, has none to hook
        model.__dict__["generate"] = generate
        model.__dict__["_prepare_cache_for_generation"] = prepare_cache


def densify(model):
    """Give ``model`` back its own attention and generation, exactly as before ``sparsify``;
    returns the model.

    >>> densify(sparsify(model, "causal & window(64)"))   # doctest: +SKIP
    """
    state = sparsified(model)
    if state is None:
        raise ModelError(f"{type(model).__name__} is not sparsified: nothing to densify")
    state.saved.restore(model)
    for module in (model, *attention_modules(model), *cross_attention_modules(model)):
        for name in (STATE, _CROSS):
            if hasattr(module, name):
                delattr(module, name)
    return model
