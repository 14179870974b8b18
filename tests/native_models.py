"""The masks transformers models build for themselves, for the ``patternc.native`` tests.

``model_masks`` runs a tiny random model of a config class once and records, per layer, the mask
its attention module receives: an attention function registered under its own name, with
transformers' eager mask builder (``masking_utils.eager_mask``, the one the eager implementation
uses), returns zeros and keeps ``mask == 0`` (allowed) per ``layer_idx``. Nothing of
``patternc.native`` is used to build them: they are the oracle.

``tiny_config`` scales a config class down (a few layers of each kind, 4 heads of 8, windows and
chunks of a few dozen tokens) from the class's own defaults, so that each model builds in well
under a second.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import CONFIG_MAPPING, AttentionInterface, AttentionMaskInterface  # noqa: E402
from transformers.masking_utils import eager_mask  # noqa: E402

CAPTURE = "patternc_test_capture"
_MASKS = "_patternc_test_masks"  # the dict each module writes its mask into while capturing

# Scaled-down sizes: set on the config where the class has the attribute.
SMALL = dict(hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
             shared_expert_intermediate_size=16, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             vocab_size=64, num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2,
             n_shared_experts=1, max_position_embeddings=2048, hidden_size_per_layer_input=8,
             vocab_size_per_layer_input=64, num_kv_shared_layers=0, first_k_dense_replace=1, v_head_dim=8,
             qk_rope_head_dim=4, qk_nope_head_dim=4, kv_lora_rank=8, q_lora_rank=8, global_head_dim=8,
             laurel_rank=4, altup_num_inputs=2, n_group=1, topk_group=1, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)


def _capture(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    store = getattr(module, _MASKS)
    store[module.layer_idx] = (attention_mask[0, 0] == 0).clone()  # (S, T) bool: allowed pairs
    return torch.zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1],
                       dtype=query.dtype), None


AttentionInterface.register(CAPTURE, _capture)
AttentionMaskInterface.register(CAPTURE, eager_mask)


def tiny_config(model_type: str, layer_types: list[str] | None, window: int | None = None,
                chunk: int | None = None, **changes):
    """The text config of ``model_type`` at a tiny size with these layer kinds (None: the class has
    no ``layer_types``) and window and chunk."""
    cls = type(CONFIG_MAPPING[model_type]().get_text_config(decoder=True))
    defaults = cls().to_dict()  # a dict: heterogeneous configs refuse reading per-layer attributes
    small = {key: value for key, value in SMALL.items() if key in defaults}
    if isinstance(defaults.get("intermediate_size"), list):  # one per layer (Gemma 3n)
        small["intermediate_size"] = [32] * len(layer_types)
    if layer_types is not None:
        small.update(num_hidden_layers=len(layer_types), layer_types=list(layer_types))
    if "per_layer_config" in defaults:
        small["per_layer_config"] = {}
    for key, value in (("sliding_window", window), ("attention_chunk_size", chunk)):
        if key in defaults:
            small[key] = value
    if "use_sliding_window" in defaults:
        small["use_sliding_window"] = window is not None
    small.update(changes)
    return cls(**small)


def tiny_model(config, seed: int = 0):
    """A random base model (no LM head) of ``config``, float32, in eval mode."""
    torch.manual_seed(seed)
    return transformers.AutoModel.from_config(config).eval()


@torch.no_grad()
def model_masks(model, n: int) -> torch.Tensor:
    """(L, n, n) bool: the mask each layer's attention receives on a sequence of ``n`` tokens."""
    own = model.config._attn_implementation
    modules = [m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)
               and "Attention" in type(m).__name__]
    store: dict[int, torch.Tensor] = {}
    for module in modules:
        setattr(module, _MASKS, store)
    model.set_attn_implementation(CAPTURE)
    try:
        ids = torch.randint(3, model.config.get_text_config(decoder=True).vocab_size, (1, n))
        model(input_ids=ids, use_cache=False)
    finally:
        model.set_attn_implementation(own)
        for module in modules:
            delattr(module, _MASKS)
    layers = model.config.get_text_config(decoder=True).num_hidden_layers
    assert sorted(store) == list(range(layers)), f"masks for layers {sorted(store)} of {layers}"
    return torch.stack([store[l][-n:, -n:] for l in range(layers)])
