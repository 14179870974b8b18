"""What ``patternc.hf`` reads off a transformers model, and what ``sparsify`` changes on it.

``model_shape`` finds the model's layers, query heads, KV heads and causality (from its text
config and its attention modules, the ones that carry ``layer_idx``) or refuses a model that
patternc cannot run exactly: one whose attention adds something a pattern's kernels do not apply
(logit soft-capping, learned sink logits, a position bias), or whose layers share a KV cache.
``fit_stack`` turns what the user gave into a stack of exactly that shape, or says which side
disagrees; ``Saved`` holds what ``sparsify`` changes on the model (its attention implementation
and the generation hooks it installs), so that ``densify`` puts it back as it was. The model's
config is never changed: ``save_pretrained`` writes the model's own.

>>> shape = model_shape(model)                      # doctest: +SKIP
ModelShape(name='LlamaForCausalLM', layers=2, heads=4, kv_heads=2, head_dim=16, causal=True)
"""

from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, replace
from typing import Any

from patternc.errors import ModelError
from patternc.lang import ast
from patternc.stack import Stack, as_stack

__all__ = ["ModelShape", "Saved", "attention_modules", "fit_stack", "model_shape"]

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
    _refuse_what_a_pattern_cannot_apply(name, config, modules)
    return ModelShape(name, layers, heads, kv_heads, head_dim, bool(causal))


# Keyword arguments an attention module may pass to the attention function that change its result
# in a way a pattern's kernels cannot reproduce (the attention function refuses them when they
# arrive; these are also looked for in the modules' source, so that sparsify refuses first).
REFUSED_ARGUMENTS = {
    "softcap": "logit soft-capping",
    "s_aux": "learned attention-sink logits (s_aux)",
    "sinks": "learned attention-sink logits (sinks)",
    "position_bias": "a position bias added to the logits (relative or ALiBi)",
    "alibi": "ALiBi position biases",
}


def _refuse_what_a_pattern_cannot_apply(name: str, config, modules: list) -> None:
    """A ``ModelError`` naming the first feature of the model's attention that the pattern's kernels
    do not apply: running it would silently compute another model."""
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None:
        raise ModelError(f"{name} applies logit soft-capping in attention (config.attn_logit_softcapping = "
                         f"{softcap}), which a pattern's kernels do not apply: patternc.hf cannot run it "
                         "exactly (with attn_logit_softcapping = None it is another model)")
    for option in ("kv_sharing_modes", "num_kv_shared_layers"):
        if getattr(config, option, None):
            raise ModelError(f"{name} shares KV caches between layers (config.{option}), which a pattern "
                             "cache does not follow: patternc.hf cannot run it")
    if getattr(config, "alibi", False) or getattr(getattr(config, "attn_config", None), "alibi", False):
        raise ModelError(f"{name} adds ALiBi position biases to the attention logits, which a pattern's "
                         "kernels do not apply: patternc.hf cannot run it exactly")
    seen: set[type] = set()
    for module in modules:
        if any(param_name == "sinks" for param_name, _ in module.named_parameters(recurse=False)):
            raise ModelError(f"{name} learns attention-sink logits (a 'sinks' parameter in "
                             f"{type(module).__name__}), which a pattern's kernels do not apply: patternc.hf "
                             "cannot run it exactly; write sink(g) in the pattern for sink tokens")
        if type(module) in seen:
            continue
        seen.add(type(module))
        passed = _arguments_passed_to_the_attention_function(type(module))
        for option in ("position_bias", "alibi", "s_aux", "sinks"):
            if option in passed:
                raise ModelError(f"{name}'s {type(module).__name__} passes {option}= to its attention "
                                 f"function: {REFUSED_ARGUMENTS[option]}, which a pattern's kernels do not "
                                 "apply, so patternc.hf cannot run it exactly")


def _arguments_passed_to_the_attention_function(cls: type) -> set[str]:
    """The keyword names in the ``attention_interface(...)`` call of a module's ``forward``, read
    from its source as transformers itself reads model sources (``_can_set_attn_implementation``);
    an empty set when the source cannot be read."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return set()
    names: set[str] = set()
    for call in re.finditer(r"attention_interface\((.*?)\n\s*\)", source, re.DOTALL):
        names.update(re.findall(r"\b([a-z_]+)\s*=", call.group(1)))
    return names


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
    """What ``sparsify`` changes on a model, with what was there before (``densify`` restores it):
    its attention implementation, and the instance attributes it sets (the generation hooks)."""

    attn_implementation: Any
    attributes: tuple[tuple[str, Any], ...]  # (name, the instance's own value or _ABSENT)

    @staticmethod
    def of(model, names: tuple[str, ...]) -> Saved:
        return Saved(model.config._attn_implementation,
                     tuple((name, model.__dict__.get(name, _ABSENT)) for name in names))

    def restore(self, model) -> None:
        for name, value in self.attributes:
            if value is _ABSENT:
                model.__dict__.pop(name, None)
            else:
                model.__dict__[name] = value
        model.set_attn_implementation(self.attn_implementation)


_ABSENT = object()  # an attribute the model's instance did not have
