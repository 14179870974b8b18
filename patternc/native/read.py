"""A model's own attention, read from its configuration: ``config.json`` -> the stack of its masks.

transformers gives each decoder layer a kind in ``layer_types`` and builds its mask from the config
(``transformers.masking_utils``); each kind is one expression (``LayerAttention``):

=====================  ==========================================  =============================
``layer_types`` entry  the mask transformers builds (q query, k key)  the expression
=====================  ==========================================  =============================
full_attention         ``k <= q``                                  ``causal``
sliding_attention      ``q - sliding_window < k <= q``             ``causal & window(w)``
chunked_attention      ``k <= q``, ``q // c == k // c``            ``causal & chunk(c)``
=====================  ==========================================  =============================

with ``w = sliding_window`` and ``c = attention_chunk_size``. A config class without ``layer_types``
(Mistral, Mixtral: ``UNIFORM_WINDOW``) runs one kind everywhere: sliding when ``sliding_window`` is
set; another such class with a window set is refused, since not every model applies it. Qwen2's
``use_sliding_window: false`` switches its window off, as Qwen2's config class does. What a stack
cannot express is kept as a note (``NativeStack.notes``, and in the stack's description): logit
soft-capping, learned sink logits, bidirectional image tokens.

Config files are data: the JSON is read, nothing in a model directory runs. When a file leaves a
key the reading needs to its class's defaults (``layer_types``, ``sliding_window``, the head
counts), transformers' own config class for its ``model_type`` fills them in, as
``from_pretrained`` would (it needs the ``hf`` extra; files that ``save_pretrained`` writes name
every key, and read without transformers).

>>> native = read_config({"num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
...     "sliding_window": 512, "layer_types": ["sliding_attention"] * 2 + ["full_attention"]})
>>> native.stack.default, native.stack.overrides[0].layers, native.stack.kv_heads
('causal & window(512)', (2, 3), 2)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from patternc.errors import ConfigError, brief, check_int
from patternc.limits import MAX_CONFIG_BYTES
from patternc.native.layers import LayerAttention, layer_stack
from patternc.stack import Stack

__all__ = ["LAYER_TYPES", "MODEL_NOTES", "UNIFORM_WINDOW", "NativeStack", "load_config", "read_config",
           "summary"]

LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked"}
_SIZE_KEY = {"sliding": "sliding_window", "chunked": "attention_chunk_size"}
_NEEDED = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "layer_types")
_SINKS = "learned sink logits per head (a softmax term no key holds; the stack's masks are exact)"
# What a stack cannot express, by the model type whose attention modules do it (no config key says
# so; tests/test_native_masks.py checks this table against the models' own modules).
MODEL_NOTES = {
    "gpt_oss": (_SINKS,),
    "flint": (_SINKS,),
    "granite_swa": (_SINKS,),
    "granitemoe_swa": (_SINKS,),
    "mimo_v2_flash": (f"sliding layers: {_SINKS}",
                      "sliding layers hold 2 x num_key_value_heads KV heads; the stack declares "
                      "num_key_value_heads for every layer"),
}
# Config classes without layer_types whose every layer builds its mask from sliding_window (checked
# against their models' masks in tests/test_native_masks.py; Moshi's and Qwen3-VL-MoE's do not).
UNIFORM_WINDOW = ("mistral", "ministral3", "mixtral", "phi3", "phi4_multimodal", "phimoe", "qwen3_moe",
                  "starcoder2")
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


@dataclass(frozen=True, slots=True)
class NativeStack:
    """A model's own attention as a stack: ``layers[l]`` is layer ``l``'s kind; ``notes`` name what
    the stack cannot express; ``head_dim``, ``dtype`` and ``context`` (max_position_embeddings)
    come from the config where it says them, for KV-cache figures."""

    stack: Stack
    layers: tuple[LayerAttention, ...]
    notes: tuple[str, ...]
    name: str
    head_dim: int | None = None
    dtype: str | None = None
    context: int | None = None

    def summary(self) -> str:
        """``22 sliding (window 4,096) and 4 full layers``."""
        return summary(self.layers)


def load_config(path: str | os.PathLike) -> tuple[dict, str]:
    """``(the parsed config, where it was read)`` from a ``config.json`` or a model directory
    holding one; JSON only, at most ``MAX_CONFIG_BYTES``."""
    path = os.fspath(path)
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if os.path.isdir(path) and not os.path.isfile(file):
        raise ConfigError("is a model directory without a config.json", where=path)
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read the config: {err.strerror}", where=file) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES:,} bytes: not a model config", where=file)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"not a JSON config: {err}", where=file) from None
    if not isinstance(data, dict):
        raise ConfigError(f"a config is a JSON object, got {brief(data)}", where=file)
    return data, file


def read_config(source: str | os.PathLike | Mapping, where: str | None = None, complete: bool = False,
                name: str | None = None) -> NativeStack:
    """The stack of a model's own attention, from a ``config.json``, a model directory or a config
    mapping (``where`` names it in errors, ``name`` in the stack's description; default: its
    ``architectures``). ``complete``: the mapping is a config class's own
    (``PretrainedConfig.to_dict()``), so a key it lacks is one its class does not have."""
    if isinstance(source, Mapping):
        data, where = dict(source), where or "config"
    else:
        data, where = load_config(source)
    text = data.get("text_config") if isinstance(data.get("text_config"), Mapping) else data
    if not complete and _missing(text):
        data, text, complete = _class_defaults(data, where, _missing(text)[0])
    return _read(data, dict(text), where, complete, name)


def _missing(text: Mapping) -> list[str]:
    missing = [key for key in _NEEDED if key not in text]
    kinds = {LAYER_TYPES.get(t) for t in text.get("layer_types") or () if isinstance(t, str)}
    return missing + [key for kind, key in _SIZE_KEY.items() if kind in kinds and key not in text]


def _class_defaults(data: dict, where: str, key: str) -> tuple[dict, dict, bool]:
    """The config as transformers' class for its ``model_type`` completes it (no remote code)."""
    model_type = data.get("model_type")
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        raise ConfigError(f"{key} is not in the config, and reading it from the defaults of its class "
                          f"({model_type or 'no model_type'}) needs transformers: pip install "
                          f"'patternc[hf]', or write {key} into the config", where=where) from None
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise ConfigError(f"{key} is not in the config and its model_type {brief(model_type)} is not one "
                          "transformers knows, so no class supplies its default", where=where)
    try:
        config = CONFIG_MAPPING[model_type].from_dict(data)
    except Exception as err:  # a class's own checks raise what they like: each is a fault of the file
        raise ConfigError(f"transformers' {model_type} config class refuses it: {err}", where=where) from None
    text = config.get_text_config(decoder=True)
    return config.to_dict(), text.to_dict(), True


def _count(text: Mapping, key: str, where: str, default: int | None = None) -> int:
    return check_int(text.get(key, default), key, error=ConfigError, where=where)


def _read(data: dict, text: dict, where: str, complete: bool, name: str | None) -> NativeStack:
    if data.get("is_encoder_decoder") or text.get("is_encoder_decoder"):
        raise ConfigError("is_encoder_decoder is true: patternc reads the attention of decoder-only "
                          "models (one causal stack)", where=where)
    bidirectional = text.get("use_bidirectional_attention")
    if bidirectional is True or text.get("is_causal") is False:
        key = "use_bidirectional_attention" if bidirectional is True else "is_causal"
        raise ConfigError(f"{key} makes this model's attention bidirectional: patternc reads causal "
                          "decoders' configs", where=where)
    if not text.get("num_attention_heads"):
        raise ConfigError("the config has no attention layers (no num_attention_heads)", where=where)
    layers = _count(text, "num_hidden_layers", where)
    heads = _count(text, "num_attention_heads", where)
    kv_heads = _count(text, "num_key_value_heads", where, heads) if text.get("num_key_value_heads") else heads
    if heads % kv_heads:
        raise ConfigError(f"num_key_value_heads = {kv_heads} does not divide num_attention_heads = {heads}",
                          where=where)
    sizes = dict(_SIZE_KEY)
    if text.get("use_sliding_window") is False:  # Qwen2's switch: its config class drops the window
        sizes["sliding"] = None
    kinds = _layer_kinds(text, layers, where, complete)
    context = text.get("max_position_embeddings")
    context = context if isinstance(context, int) and not isinstance(context, bool) else None
    size_of = {kind: _size(text, key, kind, kinds, context, where) for kind, key in _SIZE_KEY.items()
               if kind in kinds}
    if sizes["sliding"] is None and "sliding" in kinds:
        i = kinds.index("sliding")
        raise ConfigError(f"layer_types[{i}] is sliding_attention but use_sliding_window is false, which "
                          "switches the window off (sliding_window is then null)", where=where)
    layer_list = [LayerAttention(kind, size_of.get(kind)) for kind in kinds]
    notes = (*_per_layer_notes(text, heads, kv_heads, layer_list, where), *_notes(data, text))
    head_dim = text.get("head_dim") or (text["hidden_size"] // heads if text.get("hidden_size") else None)
    name = name or str(next(iter(data.get("architectures") or ()), None) or text.get("model_type")
                       or "config")
    description = f"{name}'s own attention: {summary(layer_list)}" + "".join(
        f"; not expressed: {note}" for note in notes)
    dtype = _DTYPES.get(str(text.get("dtype") or data.get("dtype") or data.get("torch_dtype")))
    return NativeStack(layer_stack(layer_list, heads, kv_heads, description), tuple(layer_list), notes, name,
                       head_dim if isinstance(head_dim, int) else None, dtype, context)


def summary(layers: list[LayerAttention] | tuple[LayerAttention, ...]) -> str:
    """``22 sliding (window 4,096) and 4 full layers``, in order of first appearance."""
    counts = Counter(layer.describe() for layer in layers)
    parts = [f"{count} {kind}" for kind, count in counts.items()]
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + " layers"


def _layer_kinds(text: Mapping, layers: int, where: str, complete: bool) -> list[str]:
    types = text.get("layer_types")
    if types is None and complete:  # the class has no layer_types: one kind for every layer
        window = text.get("sliding_window") if text.get("use_sliding_window") is not False else None
        if not window and not text.get("attention_chunk_size"):
            return ["full"] * layers
        if text.get("model_type") in UNIFORM_WINDOW and window:
            return ["sliding"] * layers
        key = "sliding_window" if window else "attention_chunk_size"
        raise ConfigError(f"{text.get('model_type')} has no layer_types and its {key} is set, but not every "
                          f"model applies it (Moshi's attention ignores its sliding_window): patternc reads "
                          f"one window for every layer for {', '.join(UNIFORM_WINDOW)}; write layer_types",
                          where=where)
    if not isinstance(types, list) or len(types) != layers:
        raise ConfigError(f"layer_types must list one type per layer (num_hidden_layers = {layers}), got "
                          f"{brief(types)}", where=where)
    if not any(t in LAYER_TYPES for t in types):
        raise ConfigError(f"the config has no attention layers: layer_types holds only "
                          f"{', '.join(sorted({str(t) for t in types}))}", where=where)
    for i, t in enumerate(types):
        if t not in LAYER_TYPES:
            raise ConfigError(f"layer_types[{i}] is {brief(t)}, a layer patternc cannot read; it reads "
                              f"{', '.join(LAYER_TYPES)}", where=where)
    return [LAYER_TYPES[t] for t in types]


def _size(text: Mapping, key: str, kind: str, kinds: list[str], context: int | None, where: str) -> int:
    value = text.get(key)
    i = kinds.index(kind)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"layer_types[{i}] is {kind} attention but {key} is {brief(value)}, not a positive "
                          "integer", where=where)
    if context is not None and value > context:
        raise ConfigError(f"{key} = {value:,} is larger than the context, max_position_embeddings = "
                          f"{context:,}: a window or chunk that long never takes effect", where=where)
    return value


def _per_layer_notes(text: Mapping, heads: int, kv_heads: int, layers: list[LayerAttention], where: str
                     ) -> list[str]:
    """Per-layer overrides (``per_layer_config``, transformers' heterogeneous configs): head counts
    and windows must be the model's; other head sizes are noted, for KV figures."""
    per_layer = text.get("per_layer_config") or {}
    if not isinstance(per_layer, Mapping):
        raise ConfigError(f"per_layer_config must map layer indices to settings, got {brief(per_layer)}",
                          where=where)
    notes, dims = [], []
    for index, settings in per_layer.items():
        l = int(index)
        key = f"per_layer_config[{index!r}]"
        for name, value in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
            if name in settings and settings[name] not in (None, value):
                raise ConfigError(f"{key}.{name} = {settings[name]} differs from {name} = {value}: a stack "
                                  "has one head count for every layer", where=where)
        for kind, name in _SIZE_KEY.items():
            if layers[l].kind == kind and settings.get(name, layers[l].size) != layers[l].size:
                raise ConfigError(f"{key}.{name} = {settings[name]} differs from {name} = {layers[l].size}: "
                                  "transformers builds every layer's mask from the one "
                                  f"{name}, and patternc reads no per-layer window", where=where)
        if "head_dim" in settings and settings["head_dim"] != text.get("head_dim"):
            dims.append(f"{l}: {settings['head_dim']}")
    if dims:
        notes.append(f"per-layer head sizes (layer: head_dim {', '.join(dims)}); KV bytes use head_dim "
                     f"{text.get('head_dim')}")
    return notes


def _notes(data: Mapping, text: Mapping) -> list[str]:
    notes = []
    if text.get("attn_logit_softcapping") is not None:
        notes.append(f"logit soft-capping (attn_logit_softcapping = {text['attn_logit_softcapping']})")
    if isinstance(text.get("use_bidirectional_attention"), str):
        notes.append(f"bidirectional attention among {text['use_bidirectional_attention']} tokens "
                     "(use_bidirectional_attention); the stack is the text-only causal mask")
    for model_type in dict.fromkeys((text.get("model_type"), data.get("model_type"))):
        notes.extend(MODEL_NOTES.get(model_type, ()))
    return notes
