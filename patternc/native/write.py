"""A stack as the configuration serving engines run natively, with their own kernels.

- ``hf-config``: the fields of a Hugging Face ``config.json`` that say each layer's attention:
  ``layer_types``, ``sliding_window``, ``attention_chunk_size`` (and ``use_sliding_window``, which
  Qwen2's class needs to keep a window), with the head counts they go with. vLLM and SGLang read
  the same fields. Merge them into a model's config, or read them back with ``read_config``.
- ``trtllm``: TensorRT-LLM's ``kv_cache_config``: ``max_attention_window``, one window per layer,
  and ``sink_token_length``, with ``max_seq_len``. TensorRT-LLM counts the sinks inside the window
  (its StreamingLLM example: "the sink tokens is included in the sliding attention tokens"), so
  ``causal & (sink(s) | window(w))`` is a window of ``w + s``; a full layer's window is
  ``max_seq_len``, the length the stack was compiled at. The file is an ``--extra_llm_api_options``
  YAML (JSON is YAML).

Write then read is the identity on the family (``tests/test_native_write.py``).

>>> cp = patternc.compile(patternc.Stack("causal & (sink(4) | window(1020))", layers=2), n=8192)
>>> to_trtllm(cp)["kv_cache_config"]
{'max_attention_window': [1024, 1024], 'sink_token_length': 4}
>>> from_trtllm(to_trtllm(cp), heads=1).default
'causal & (sink(4) | window(1020))'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from patternc.errors import ConfigError, brief, check_int
from patternc.native.family import native_layers
from patternc.native.layers import LayerAttention, layer_stack
from patternc.native.read import LAYER_TYPES
from patternc.stack import Stack

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["FORMATS", "from_trtllm", "save_native", "to_hf_config", "to_trtllm"]

FORMATS = {
    "hf-config": "JSON of a config.json's layer_types, sliding_window, attention_chunk_size (vLLM, SGLang)",
    "trtllm": "JSON of TensorRT-LLM's kv_cache_config: max_attention_window per layer, sink_token_length",
}
_TYPE_OF = {kind: name for name, kind in LAYER_TYPES.items()}


def to_hf_config(cp: CompiledPattern, superset: bool = False) -> dict:
    """The config fields that make a model run ``cp``'s stack (see ``native_layers`` for what is
    refused, and what ``superset`` does)."""
    layers = native_layers(cp, "hf-config", superset)
    window = next((layer.size for layer in layers if layer.kind == "sliding"), None)
    chunk = next((layer.size for layer in layers if layer.kind == "chunked"), None)
    return {"num_hidden_layers": cp.layers, "num_attention_heads": cp.heads,
            "num_key_value_heads": cp.stack.kv_heads,
            "layer_types": [_TYPE_OF[layer.kind] for layer in layers],
            "sliding_window": window, "use_sliding_window": window is not None, "attention_chunk_size": chunk}


def to_trtllm(cp: CompiledPattern, superset: bool = False) -> dict:
    """TensorRT-LLM's settings for ``cp``'s stack, at ``max_seq_len = cp.n``."""
    layers = native_layers(cp, "trtllm", superset)
    sinks = max((layer.sinks for layer in layers), default=0)
    windows = [cp.n if layer.kind == "full" else layer.size + layer.sinks for layer in layers]
    kv_cache = {"max_attention_window": windows, **({"sink_token_length": sinks} if sinks else {})}
    return {"max_seq_len": cp.n, "kv_cache_config": kv_cache}


def from_trtllm(settings: Mapping, heads: int, kv_heads: int | None = None) -> Stack:
    """The stack TensorRT-LLM runs under ``settings`` (as ``to_trtllm`` writes them), for a model of
    ``heads`` query heads."""
    cache = settings.get("kv_cache_config")
    n = settings.get("max_seq_len")
    if not isinstance(cache, Mapping) or not isinstance(cache.get("max_attention_window"), list):
        raise ConfigError("kv_cache_config.max_attention_window must be a list of windows, one per layer")
    n = check_int(n, "max_seq_len", error=ConfigError)
    sinks = cache.get("sink_token_length") or 0
    layers = []
    for l, w in enumerate(cache["max_attention_window"]):
        if isinstance(w, bool) or not isinstance(w, int) or w <= sinks:
            raise ConfigError(f"kv_cache_config.max_attention_window[{l}] must be an integer above "
                              f"sink_token_length = {sinks}, got {brief(w)}")
        layers.append(LayerAttention("full") if w >= n else LayerAttention("sliding", w - sinks, sinks))
    return layer_stack(layers, heads, kv_heads)


def save_native(cp: CompiledPattern, path: str | os.PathLike, fmt: str, superset: bool = False) -> dict:
    """Write ``cp`` in ``fmt`` (a key of ``FORMATS``) as JSON to ``path``; returns what it wrote.
    Nothing is written when the stack is refused."""
    settings = {"hf-config": to_hf_config, "trtllm": to_trtllm}[fmt](cp, superset)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(settings, indent=2) + "\n")
    return settings
