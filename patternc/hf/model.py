"""What ``patternc.hf`` reads off a transformers model, and the settings ``sparsify`` changes.

``model_shape`` finds the model's layers, query heads, KV heads and causality (from its text
config and its attention modules, the ones that carry ``layer_idx``) or refuses a model that
patternc cannot drive; ``fit_stack`` turns what the user gave into a stack of exactly that shape,
or says which side disagrees; ``Saved`` holds what ``sparsify`` changes on the model, so that
``densify`` puts it back as it was.

>>> shape = model_shape(model)                      # doctest: +SKIP
ModelShape(name='LlamaForCausalLM', layers=2, heads=4, kv_heads=2, head_dim=16, causal=True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from patternc.errors import ModelError
from patternc.lang import ast
from patternc.stack import Stack, as_stack

__all__ = ["ModelShape", "Saved", "attention_modules", "fit_stack", "model_shape"]

# Config settings that make transformers' KV cache evict keys (a sliding-window or chunked cache
# layer keeps only the last w keys). A pattern decides which keys a query reads, so while a model is
# sparsified its cache must keep every key; the pattern replaces the model's own window.
_EVICTING = ("sliding_window", "attention_chunk_size")
_EVICTING_LAYER_TYPES = ("sliding_attention", "chunked_attention")


@dataclass(frozen=True, slots=True)
class ModelShape:
    """The attention of a model as a stack sees it."""

    name: str  # the model's class, for messages
    layers: int
    heads: int  # query heads
    kv_heads: int  # query head h reads KV head h // (heads // kv_heads)
    head_dim: int
    causal: bool  # its attention modules are causal (a decoder)


def _text_config(model) -> Any:
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def attention_modules(model) -> list:
    """The modules that call the attention interface: those with a ``layer_idx``, in model order."""
    return [module for module in model.modules() if isinstance(getattr(module, "layer_idx", None), int)
            and hasattr(module, "forward") and "Attention" in type(module).__name__]


def model_shape(model) -> ModelShape:
    """The model's attention shape, or a ``ModelError`` saying why patternc cannot drive it."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ModelError(f"patternc.hf drives transformers models (a PreTrainedModel), got a "
                         f"{type(model).__name__}")
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        raise ModelError(f"{name} is an encoder-decoder model; patternc.hf drives one attention stack "
                         "(decoder-only models, or encoders)")
    if not type(model)._can_set_attn_implementation():
        raise ModelError(f"{name} does not route attention through transformers' AttentionInterface "
                         "(its attention modules compute attention themselves), so no pattern can be "
                         "plugged in; models that do include Llama, Mistral, Qwen2 and most decoders "
                         "of transformers 5")
    config = _text_config(model)
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    modules = attention_modules(model)
    found = sorted({module.layer_idx for module in modules})
    if found != list(range(layers)):
        raise ModelError(f"{name} has {layers} layers (config.num_hidden_layers) but attention modules "
                         f"with layer_idx {found[:8]}{'...' if len(found) > 8 else ''}: patternc.hf gives "
                         "each layer its pattern by layer_idx, and needs one per layer")
    causal = getattr(config, "is_causal", True) and any(getattr(m, "is_causal", True) for m in modules)
    return ModelShape(name, layers, heads, kv_heads, head_dim, bool(causal))


def fit_stack(spec: str | os.PathLike | ast.Pattern | Stack, shape: ModelShape) -> Stack:
    """The stack ``spec`` means on this model.

    A bare expression (``"causal & window(512)"``) applies to every layer and head: it becomes a
    stack of the model's shape, so ``l``, ``h``, ``L`` and ``H`` in it are the model's. A stack file
    or a ``Stack`` with layers and heads must have the model's, and a stack declared non-causal is
    refused on a causal model.
    """
    stack = as_stack(spec)
    bare = stack.source is None and not stack.overrides and stack.layers == stack.heads == 1
    if bare:
        stack = replace(stack, layers=shape.layers, heads=shape.heads)
    where = stack.source or "the stack"
    if (stack.layers, stack.heads) != (shape.layers, shape.heads):
        raise ModelError(f"{where} has {stack.layers} layers x {stack.heads} heads but {shape.name} has "
                         f"{shape.layers} layers x {shape.heads} query heads ({shape.kv_heads} KV heads): "
                         "write the stack for the model, or give a bare expression, which applies to "
                         "every layer and head")
    if shape.causal and stack.causal is False:
        raise ModelError(f"{where} is declared causal: false but {shape.name} is a causal model (a "
                         "decoder reads no later token): declare causal: true and write causal & (...)")
    return stack


def non_causal_error(stack: Stack, shape: ModelShape, n: int, layer: int, head: int) -> ModelError:
    """The refusal of an undeclared stack found to read later keys on a causal model."""
    where = stack.source or "the stack"
    text, _ = stack.rule_at(layer, head)
    return ModelError(f"{where} lets a query read later keys at n = {n:,} (layer {layer} head {head}: "
                      f"{text}) but {shape.name} is a causal model: write causal & ({text})")


@dataclass(frozen=True, slots=True)
class Saved:
    """What ``sparsify`` changes on a model: its attention implementation and the cache settings
    that would evict keys, with their original values (``densify`` restores them)."""

    attn_implementation: Any
    settings: tuple[tuple[str, Any], ...]  # (name, original value) on the text config

    @staticmethod
    def of(model) -> Saved:
        config = _text_config(model)
        settings = [(name, getattr(config, name)) for name in (*_EVICTING, "layer_types")
                    if getattr(config, name, None) is not None]
        return Saved(model.config._attn_implementation, tuple(settings))

    def keep_every_key(self, model) -> None:
        """Switch the cache settings so that transformers' caches hold every key."""
        config = _text_config(model)
        for name, value in self.settings:
            if name == "layer_types":
                setattr(config, name, ["full_attention" if kind in _EVICTING_LAYER_TYPES else kind
                                       for kind in value])
            else:
                setattr(config, name, None)

    def restore(self, model) -> None:
        config = _text_config(model)
        for name, value in self.settings:
            setattr(config, name, value)
        model.set_attn_implementation(self.attn_implementation)
