"""Tiny random transformers models (no downloads) and an independent dense-mask reference for the
``patternc.hf`` tests.

The reference is a second attention function, registered under its own name: eager softmax
attention under the boolean masks of ``CompiledPattern.to_dense`` for the module's layer, every
query head reading KV head ``h // (heads // kv_heads)``. It shares nothing with ``patternc.hf``
but the compiler's dense masks.
"""

from __future__ import annotations

import math

import pytest
import torch

import patternc
from patternc.stack import Stack

transformers = pytest.importorskip("transformers")

VOCAB = 61
REFERENCE = "patternc_test_dense_mask"
_MASKS = "_test_dense_masks"  # (L, H, S, T) bool on each attention module while the reference runs


def _config(family: str):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512, pad_token_id=0,
                  bos_token_id=None, eos_token_id=None)  # generate() never stops early
    if family == "llama":  # grouped-query: 4 query heads read 2 KV heads
        return transformers.LlamaConfig(num_key_value_heads=2, **common)
    if family == "qwen2":  # multi-head, with q/k/v biases
        return transformers.Qwen2Config(num_key_value_heads=4, **common)
    if family == "mistral":  # multi-query, and a sliding window shorter than the test sequences
        return transformers.MistralConfig(num_key_value_heads=1, sliding_window=24, **common)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "mistral")
CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def tiny_model(family: str, seed: int = 0):
    """A randomly initialised 2-layer x 4-head model of ``family``, float32, in eval mode."""
    torch.manual_seed(seed)
    model = getattr(transformers, CLASSES[family])(_config(family)).eval()
    with torch.no_grad():  # random init is near-uniform attention: sharpen q and k so masks matter
        for module in model.modules():
            for name in ("q_proj", "k_proj"):
                if hasattr(module, name):
                    getattr(module, name).weight.mul_(4.0)
    return model


def model_stack(spec: str, model) -> Stack:
    """The stack a bare expression becomes on ``model``."""
    config = model.config
    return Stack(default=spec, layers=config.num_hidden_layers, heads=config.num_attention_heads)


def _dense_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    masks = getattr(module, _MASKS)[module.layer_idx]  # (H, S, T)
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)  # (B, H, T, d)
    v = value.repeat_interleave(group, dim=1)
    scores = torch.matmul(query, k.transpose(-1, -2)) * (scaling or 1 / math.sqrt(query.shape[-1]))
    scores = scores.masked_fill(~masks.to(scores.device), -math.inf)
    weights = torch.softmax(scores, dim=-1).masked_fill(~masks.any(-1, keepdim=True), 0.0)  # no key: 0
    out = torch.matmul(weights, v)  # (B, H, S, d)
    return out.transpose(1, 2).contiguous(), None


transformers.AttentionInterface.register(REFERENCE, _dense_attention)


@torch.no_grad()
def reference_logits(model, ids: torch.Tensor, masks) -> torch.Tensor:
    """Logits of ``model`` (not sparsified) on ``ids`` with every layer's attention under ``masks``
    (L, H, n, n) bool, a numpy array or tensor; the model's attention is restored after."""
    masks = torch.as_tensor(masks)
    own = model.config._attn_implementation
    modules = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    for module in modules:
        setattr(module, _MASKS, masks)
    model.set_attn_implementation(REFERENCE)
    try:
        return model(ids, use_cache=False).logits
    finally:
        model.set_attn_implementation(own)
        for module in modules:
            delattr(module, _MASKS)


def pattern_masks(spec: str | Stack, model, n: int, block=None) -> torch.Tensor:
    """(L, H, n, n) dense masks of ``spec`` on ``model`` at length ``n``."""
    stack = spec if isinstance(spec, Stack) else model_stack(spec, model)
    return torch.from_numpy(patternc.compile(stack, n, block=block).to_dense())
