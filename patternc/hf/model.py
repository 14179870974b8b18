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
    """The modules that call the attention interface over the model's own tokens: those with a
    ``layer_idx``, in model order, cross-attention over an encoder's states left out."""
    return [module for name, module in model.named_modules() if _is_attention(module)
            and not is_cross_attention(name, module)]


def cross_attention_modules(model) -> list:
    """The modules that attend from the model's tokens to an encoder's states (no pattern's)."""
    return [module for name, module in model.named_modules() if _is_attention(module)
            and is_cross_attention(name, module)]


def _is_attention(module) -> bool:
    return (isinstance(getattr(module, "layer_idx", None), int) and hasattr(module, "forward")
            and "Attention" in type(module).__name__)


_CROSS_NAMES = ("encoder_attn", "crossattention", "cross_attn", "cross_attention")


def is_cross_attention(name: str, module) -> bool:
    """Whether the module at ``name`` attends to another sequence's states (an encoder's, an
    image's): its keys are not the model's tokens, so a pattern over those tokens does not apply."""
    return (bool(getattr(module, "is_cross_attention", False)) or "CrossAttention" in type(module).__name__
            or any(part in _CROSS_NAMES for part in name.split(".")))


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
    modules = attention_modules(model)
    if not modules:
        raise ModelError(f"{name} has no attention layers (modules with a layer_idx that call the attention "
                         "function): it is a state-space or mixing model, and no pattern applies to it")
    config = _text_config(model)
    try:
        layers, heads = config.num_hidden_layers, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    except RuntimeError as error:  # transformers' AmbiguousGlobalPerLayerAttributeError
        raise ModelError(f"{name} sets its attention sizes per layer (a heterogeneous config): patternc.hf "
                         "needs one number of heads and one head size for every layer") from error
    found = sorted({module.layer_idx for module in modules})
    if found != list(range(layers)):
        kinds = getattr(config, "layer_types", None)
        others = sorted({str(kind) for kind in kinds or ()
                         if "attention" not in str(kind) or "linear" in str(kind)})
        what = (f" (config.layer_types has {', '.join(others)} layers, which no pattern describes)"
                if others else "")
        raise ModelError(f"{name} has {layers} layers (config.num_hidden_layers) but attention modules "
                         f"with layer_idx {found[:8]}{'...' if len(found) > 8 else ''}{what}: patternc.hf "
                         "gives each layer its pattern by layer_idx, and needs softmax attention in every "
                         "layer")
    causal = getattr(config, "is_causal", True) and any(getattr(m, "is_causal", True) for m in modules)
    _refuse_what_a_pattern_cannot_apply(name, config, modules)
    kv_heads = _kv_heads(name, config, modules, heads)
    return ModelShape(name, layers, heads, kv_heads, head_dim, bool(causal))


def _kv_heads(name: str, config, modules: list, heads: int) -> int:
    """The KV heads, as the attention modules read them (``num_key_value_groups`` query heads per KV
    head: GPT-BigCode's multi-query reads one though its config names none), else the config's."""
    groups = {getattr(module, "num_key_value_groups", None) for module in modules} - {None}
    if len(groups) == 1 and isinstance(next(iter(groups)), int) and heads % next(iter(groups)) == 0:
        return heads // next(iter(groups))
    if len(groups) > 1:
        raise ModelError(f"{name}'s layers group query heads differently (num_key_value_groups "
                         f"{sorted(groups)}): patternc.hf needs one number of KV heads for every layer")
    return getattr(config, "num_key_value_heads", None) or heads


# Keyword arguments an attention module may pass to the attention function that change its result
# in a way a pattern's kernels cannot reproduce (the attention function refuses them when they
# arrive; these are also looked for in the modules' source, so that sparsify refuses first).
REFUSED_ARGUMENTS = {
    "softcap": "logit soft-capping",
    "s_aux": "learned attention-sink logits (s_aux)",
    "sinks": "learned attention-sink logits (sinks)",
    "position_bias": "a position bias added to the logits (relative or ALiBi)",
    "alibi": "ALiBi position biases",
    "indices": "a learned selection of keys per query (a sparse-attention indexer's top-k indices)",
}


def _refuse_what_a_pattern_cannot_apply(name: str, config, modules: list) -> None:
    """A ``ModelError`` naming the first feature of the model's attention that the pattern's kernels
    do not apply: running it would silently compute another model."""
    softcap = getattr(config, "attn_logit_softcapping", None)
    if softcap is not None:
        raise ModelError(f"{name} applies logit soft-capping in attention (config.attn_logit_softcapping = "
                         f"{softcap}), which a pattern's kernels do not apply: patternc.hf cannot run it "
                         "exactly (with attn_logit_softcapping = None it is another model)")
    modes = getattr(config, "kv_sharing_modes", None) or ()
    shared = getattr(config, "num_kv_shared_layers", None) or 0
    if shared or any(mode == "reuse" for mode in modes):
        option = "num_kv_shared_layers" if shared else "kv_sharing_modes"
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
        takes = set(inspect.signature(type(module).forward).parameters)
        shared = sorted({"shared_kv_states", "cache_offset"} & takes)
        if shared:
            raise ModelError(f"{name}'s {type(module).__name__} reads keys and values other layers cached "
                             f"(its forward takes {', '.join(shared)}: layers looped over one cache), which "
                             "a pattern cache does not follow: patternc.hf cannot run it")
        source = _forward_source(type(module))
        passed = _arguments_passed_to_the_attention_function(source)
        for option in REFUSED_ARGUMENTS:
            if option in passed and option != "softcap":  # softcap=None is passed by models without it
                raise ModelError(f"{name}'s {type(module).__name__} passes {option}= to its attention "
                                 f"function: {REFUSED_ARGUMENTS[option]}, which a pattern's kernels do not "
                                 "apply, so patternc.hf cannot run it exactly")
        mask = passed.get("attention_mask", "attention_mask")
        if mask != "attention_mask" or re.search(r"\battention_mask\s*\[", source):
            how = f"passes attention_mask={mask}" if mask != "attention_mask" else "indexes attention_mask"
            raise ModelError(f"{name}'s {type(module).__name__} builds on the attention mask itself (its "
                             f"forward {how}): a sparsified model builds no (queries, keys) mask, the "
                             "pattern decides what each query reads, so patternc.hf cannot run it exactly")


def _forward_source(cls: type) -> str:
    """The source of a module's ``forward``, as transformers itself reads model sources
    (``_can_set_attn_implementation``); empty when it cannot be read."""
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _arguments_passed_to_the_attention_function(source: str) -> dict[str, str]:
    """The keyword arguments of the ``attention_interface(...)`` calls in a ``forward``'s source:
    name -> the expression passed (as written, stripped)."""
    passed: dict[str, str] = {}
    for call in re.finditer(r"attention_interface\((.*?)\n\s*\)", source, re.DOTALL):
        for keyword, value in re.findall(r"\b([a-z_]+)\s*=\s*([^,\n]+)", call.group(1)):
            passed.setdefault(keyword, value.strip())
    return passed


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
