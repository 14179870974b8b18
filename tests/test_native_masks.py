"""A model's own attention read as a stack equals, pair by pair and layer by layer, the masks the
model builds for itself (``transformers.masking_utils``, captured in ``tests/native_models.py``),
for every config class of the pinned transformers whose layers are sliding, chunked or full, at
n = 300 and n = 1,000 with windows and chunks scaled down."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import patternc
from patternc.errors import ConfigError
from patternc.native import read_config
from patternc.native.read import MODEL_NOTES, UNIFORM_WINDOW

native_models = pytest.importorskip("native_models")
from native_models import model_masks, tiny_config, tiny_model  # noqa: E402

import patternc.hf  # noqa: E402

S, F, C = "sliding_attention", "full_attention", "chunked_attention"
# Every text config class of transformers 5.24 with sliding (or chunked) layers in layer_types whose
# base model builds in a few lines (encoders, encoder-decoders and bidirectional models are refused:
# test_native_read.py); the classes whose default is all full but whose models build sliding masks
# (Qwen2 and kin); and the classes without layer_types that slide every layer (UNIFORM_WINDOW).
LAYERED = ("afmoe", "beam", "cohere2", "cohere2_moe", "cwm", "dots1", "exaone4", "exaone_moe", "flint",
           "gemma2", "gemma3_text", "gemma3n_text", "gemma4_text", "gemma4_unified_text", "gpt_oss",
           "granite_swa", "granitemoe_swa", "kolibri1", "laguna", "mellum", "mimo_v2_flash", "ministral",
           "modernbert-decoder", "muse_glimmer_text", "muse_spark_text", "olmo3", "qwen2", "qwen2_moe",
           "qwen3", "smollm3", "vaultgemma")
CASES = [pytest.param(t, [S, S, F, S], id=t) for t in LAYERED]
CASES += [pytest.param("llama4_text", [C, C, F, C], id="llama4_text")]
CASES += [pytest.param(t, None, id=t) for t in UNIFORM_WINDOW]


def _config(model_type: str, types: list[str] | None, n: int):
    # windows and chunks scaled to the length, neither a divisor of n nor of each other
    return tiny_config(model_type, types, window=n // 8 + 1, chunk=n // 6 if types and C in types else None,
                       **({} if types else {"num_hidden_layers": 3}))


@pytest.mark.parametrize("n", [300, 1000])
@pytest.mark.parametrize("model_type, types", CASES)
def test_the_stack_is_the_models_own_mask(model_type, types, n):
    config = _config(model_type, types, n)
    native = patternc.hf.native_stack(config)
    masks = model_masks(tiny_model(config), n).numpy()  # (L, n, n) as the model builds them
    dense = patternc.compile(native.stack, n=n).to_dense()  # (L, H, n, n)
    assert dense.shape[:2] == (config.num_hidden_layers, config.num_attention_heads)
    for l in range(dense.shape[0]):
        for h in range(dense.shape[1]):
            np.testing.assert_array_equal(dense[l, h], masks[l], err_msg=f"{model_type} layer {l} head {h}")
    fields = config.to_dict()
    assert native.stack.kv_heads == (fields.get("num_key_value_heads") or fields["num_attention_heads"])


@pytest.mark.parametrize("model_type, types", CASES)
def test_the_saved_json_reads_as_the_config_object_does(model_type, types, tmp_path):
    config = _config(model_type, types, 300)
    config.save_pretrained(tmp_path)
    from_object, from_file = patternc.hf.native_stack(config), read_config(tmp_path)
    assert from_file.layers == from_object.layers and from_file.notes == from_object.notes
    assert from_file.stack.overrides == from_object.stack.overrides
    assert from_file.stack.kv_heads == from_object.stack.kv_heads
    data = json.loads((tmp_path / "config.json").read_text())
    if "layer_types" in data:  # a file that leaves layer_types to its class reads as the class fills it
        del data["layer_types"]
        derived = read_config(data)
        kept = {k: v for k, v in data.items() if k != "transformers_version"}
        expected = type(config)(**kept).layer_types
        assert [layer.kind for layer in derived.layers] == [t.split("_")[0] for t in expected]


def test_qwen2s_own_rule_max_window_layers_reads_as_its_class_applies_it():
    config = tiny_config("qwen2", None, window=40, num_hidden_layers=4, max_window_layers=2)
    assert config.layer_types == [F, F, S, S]  # the class's rule: sliding from layer max_window_layers on
    native = patternc.hf.native_stack(config)
    masks = model_masks(tiny_model(config), 300).numpy()
    np.testing.assert_array_equal(patternc.compile(native.stack, n=300).to_dense()[:, 0], masks)


@pytest.mark.parametrize("model_type", [t for t in LAYERED if t in MODEL_NOTES or t in ("gemma2", "gpt_oss",
                                                                                        "cohere2", "olmo3")])
def test_notes_name_what_the_models_modules_do_and_the_stack_cannot(model_type):
    config = _config(model_type, [S, S, F, S], 300)
    model = tiny_model(config)
    notes = " ".join(patternc.hf.native_stack(model).notes)
    sinks = any(isinstance(getattr(m, "sinks", None), torch.nn.Parameter) for m in model.modules())
    assert ("learned sink logits" in notes) == sinks
    assert ("soft-capping" in notes) == (getattr(config, "attn_logit_softcapping", None) is not None)


@pytest.mark.parametrize("model_type", ["moshi", "qwen3_vl_moe"])
def test_a_class_whose_model_ignores_its_window_is_refused_not_guessed(model_type):
    config = tiny_config(model_type, None, window=37)
    masks = model_masks(tiny_model(config), 64).numpy()
    np.testing.assert_array_equal(masks, np.tril(np.ones((64, 64), bool))[None].repeat(len(masks), 0))
    with pytest.raises(ConfigError, match="has no layer_types and its sliding_window is set"):
        patternc.hf.native_stack(config)
