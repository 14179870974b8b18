"""Models' own patterns, both ways, on transformers objects.

``native_stack`` reads a model's (or a config's) own attention as a stack (``patternc.native``
does the reading, from the config's fields); ``to_native`` gives a model whose own config runs a
stack: its ``layer_types``, ``sliding_window`` and ``attention_chunk_size`` say it, so
``save_pretrained`` writes it and any engine that reads the config (transformers, vLLM, SGLang)
runs it with its own kernels and KV cache. Where ``sparsify`` runs a stack through patternc's
kernels, ``to_native`` runs it through the model's, and both give the same logits
(``tests/test_hf_native.py``).

>>> import transformers
>>> native = native_stack(transformers.Gemma3TextConfig())
>>> native.summary(), native.stack.kv_heads
('22 sliding (window 4,096) and 4 full layers', 4)
>>> model = to_native(model, "conf/pattern/my_hybrid.yaml")              # doctest: +SKIP
>>> model.save_pretrained("outputs/hybrid")                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import replace

from patternc.compiled import compile
from patternc.errors import ConfigError, ModelError
from patternc.hf.model import fit_stack, model_shape
from patternc.hf.state import sparsified
from patternc.lang import ast
from patternc.native import LAYER_TYPES, NativeStack, native_layers, read_config
from patternc.native.read import UNIFORM_WINDOW
from patternc.stack import Stack, as_stack

__all__ = ["native_stack", "native_support", "to_native"]

_TYPE_OF = {kind: name for name, kind in LAYER_TYPES.items()}
# the mask builders a model's module imports say which layer kinds its forward can build
_BUILDERS = {"sliding": "create_sliding_window_causal_mask", "chunked": "create_chunked_causal_mask"}


def native_stack(source) -> NativeStack:
    """The stack of a model's own attention: ``source`` is a transformers model, a config object, a
    config's dict, a ``config.json`` or a model directory (read as data; nothing in it runs).

    >>> native_stack({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    ...               "layer_types": ["full_attention"] * 2}).stack.default
    'causal'
    """
    from transformers import PretrainedConfig, PreTrainedModel

    if isinstance(source, PreTrainedModel):
        source = source.config
    if isinstance(source, PretrainedConfig):
        name = type(source.get_text_config(decoder=True)).__name__
        return read_config(source.to_dict(), where=type(source).__name__, complete=True, name=name)
    return read_config(source)


def native_support(model) -> tuple[bool, tuple[str, ...]]:
    """``(per layer, kinds)``: whether ``model``'s config gives each layer its kind (``layer_types``)
    or one kind to all, and the kinds its forward builds masks for (from the builders its module
    imports from ``transformers.masking_utils``)."""
    text = model.config.get_text_config(decoder=True).to_dict()
    module = sys.modules[type(model).__module__]
    kinds = ("full", *(kind for kind, builder in _BUILDERS.items() if hasattr(module, builder)))
    if "layer_types" not in text and text.get("model_type") not in UNIFORM_WINDOW:
        kinds = ("full",)  # a window without layer_types is not applied by every model (see patternc.native)
    return "layer_types" in text, kinds


def to_native(model, spec: str | os.PathLike | ast.Pattern | Stack, *,
              block: int | tuple[int, int] | None = None, params: dict[str, int | float] | None = None):
    """A new model of ``model``'s class and weights whose own config runs the stack ``spec`` (a
    bare expression, a stack file or a ``Stack``, as for ``sparsify``); ``model`` is unchanged.

    The stack is classified at the model's context (``max_position_embeddings``): per layer every
    head alike, full, sliding with one window, or chunked with one chunk, each a kind the model's
    forward builds. Anything else is a ``ConfigError`` naming the layer, head and term (or the
    kind the model cannot build); a stack that does not fit the model is a ``ModelError``.

    >>> native = to_native(model, "causal & window(4096)")   # doctest: +SKIP
    """
    shape = model_shape(model)
    if sparsified(model) is not None:
        raise ModelError(f"{shape.name} is sparsified: its config no longer says its own attention; "
                         "patternc.hf.densify(model) first")
    given = as_stack(spec)
    if given.kv_heads not in (given.heads, shape.kv_heads):  # a stack that declares GQA must be the model's
        raise ModelError(f"the stack declares {given.kv_heads} KV heads but {shape.name} has "
                         f"{shape.kv_heads}")
    stack = fit_stack(given, shape)
    text = model.config.get_text_config(decoder=True)
    context = getattr(text, "max_position_embeddings", None)
    if not isinstance(context, int):
        raise ModelError(f"{shape.name}'s config has no max_position_embeddings: to_native classifies the "
                         "stack at the model's context")
    cp = compile(replace(stack, kv_heads=shape.kv_heads), n=context, block=block, params=params)
    layers = native_layers(cp, "hf-config")
    per_layer, kinds = native_support(model)
    for l, layer in enumerate(layers):
        if layer.kind not in kinds:
            raise ConfigError(f"layer {l} is {layer.describe()} ({cp.expression(l, 0)}) but {shape.name} "
                              f"builds masks for {', '.join(kinds)} attention only")
        if not per_layer and layer != layers[0]:
            raise ConfigError(f"layer {l} is {layer.describe()} but layer 0 is {layers[0].describe()}: "
                              f"{type(text).__name__} has no layer_types, so every layer runs one attention")
    config = copy.deepcopy(model.config)
    _write(config.get_text_config(decoder=True), layers, per_layer)
    native = type(model)._from_config(config, dtype=model.dtype)
    native.load_state_dict(model.state_dict())
    native.generation_config = copy.deepcopy(model.generation_config)
    return native.to(model.device).train(model.training)


def _write(text, layers, per_layer: bool) -> None:
    """Set the config fields that say ``layers`` (``patternc.native.to_hf_config``'s fields)."""
    window = next((layer.size for layer in layers if layer.kind == "sliding"), None)
    chunk = next((layer.size for layer in layers if layer.kind == "chunked"), None)
    if per_layer:
        text.layer_types = [_TYPE_OF[layer.kind] for layer in layers]
    fields = text.to_dict()
    for key, value in (("sliding_window", window), ("attention_chunk_size", chunk)):
        if key in fields or value is not None:
            setattr(text, key, value)
    if "use_sliding_window" in fields:  # Qwen2's switch: without it, its class drops the window
        text.use_sliding_window = window is not None
