"""Reading a model's config as a stack: the stack's shape, its notes, and every bad config refused
with its key named. Config files are data: JSON is read, nothing in a model directory runs."""

from __future__ import annotations

import json

import pytest

from patternc.errors import ConfigError
from patternc.native import LayerAttention, read_config

S, F, C = "sliding_attention", "full_attention", "chunked_attention"


def config(**changes) -> dict:
    base = {"model_type": "gemma3_text", "num_hidden_layers": 6, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 512, "max_position_embeddings": 8192,
            "layer_types": [S] * 5 + [F], "dtype": "bfloat16"}
    return {**base, **changes}


def test_layers_heads_and_kv_heads_are_the_models():
    native = read_config(config(), name="Gemma3TextConfig")
    assert (native.stack.layers, native.stack.heads, native.stack.kv_heads) == (6, 8, 4)
    assert native.stack.default == "causal & window(512)" and native.stack.causal is True
    assert [(r.expr, r.layers) for r in native.stack.overrides] == [("causal", (5, 6))]
    assert native.layers == (LayerAttention("sliding", 512),) * 5 + (LayerAttention("full"),)
    assert (native.head_dim, native.dtype, native.context) == (256, "bfloat16", 8192)
    assert native.stack.description == ("Gemma3TextConfig's own attention: 5 sliding (window 512) and 1 full "
                                        "layers")


def test_chunked_layers_and_runs_of_layers_become_overrides():
    native = read_config(config(layer_types=[C, C, C, F, C, F], attention_chunk_size=1024,
                                sliding_window=None))
    assert native.stack.default == "causal & chunk(1024)"
    assert [(r.expr, r.layers) for r in native.stack.overrides] == [("causal", (3, 4)), ("causal", (5, 6))]


def test_what_a_stack_cannot_express_is_named_in_a_note():
    native = read_config(config(model_type="gpt_oss", attn_logit_softcapping=50.0))
    assert any("soft-capping (attn_logit_softcapping = 50.0)" in note for note in native.notes)
    assert any("learned sink logits" in note for note in native.notes)
    assert "not expressed: logit soft-capping" in native.stack.description


def test_a_text_config_inside_a_multimodal_config_is_read():
    native = read_config({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                          "text_config": config()})
    assert native.name == "Gemma3ForConditionalGeneration" and native.stack.layers == 6


def test_a_model_directory_is_read_as_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config()))
    (tmp_path / "modeling_evil.py").write_text("raise SystemExit('never imported')\n")
    assert read_config(tmp_path).stack == read_config(tmp_path / "config.json").stack


def test_qwen2s_switch_drops_its_window_as_its_class_does():
    native = read_config(config(layer_types=[F] * 6, use_sliding_window=False))
    assert native.stack.default == "causal"


def write(tmp_path, text: str):
    (tmp_path / "config.json").write_text(text)
    return tmp_path


@pytest.mark.parametrize("data, message", [
    pytest.param(config(layer_types=["linear_attention"] * 6), "no attention layers: layer_types holds only "
                 "linear_attention", id="no_attention_layers"),
    pytest.param({"num_hidden_layers": 4, "num_attention_heads": 0, "num_key_value_heads": 0,
                  "layer_types": ["mamba"] * 4},
                 "the config has no attention layers (no num_attention_heads)",
                 id="no_heads"),
    pytest.param(config(layer_types=[S, S, "linear_attention", S, S, F]),
                 "layer_types[2] is 'linear_attention', a layer patternc cannot read", id="unknown_type"),
    pytest.param(config(sliding_window=16384), "sliding_window = 16,384 is larger than the context, "
                 "max_position_embeddings = 8,192", id="window_past_context"),
    pytest.param(config(layer_types=[C] * 6, attention_chunk_size=10000), "attention_chunk_size = 10,000 is "
                 "larger than the context", id="chunk_past_context"),
    pytest.param(config(layer_types=[S] * 5), "layer_types must list one type per layer (num_hidden_layers "
                 "= 6)", id="short_layer_types"),
    pytest.param(config(sliding_window=None),
                 "layer_types[0] is sliding attention but sliding_window is None",
                 id="sliding_without_window"),
    pytest.param(config(sliding_window=0), "sliding_window is 0, not a positive integer", id="window_zero"),
    pytest.param(config(layer_types=[F, C, F, F, F, F]), "attention_chunk_size", id="chunked_without_chunk"),
    pytest.param(config(use_sliding_window=False),
                 "layer_types[0] is sliding_attention but use_sliding_window is false",
                 id="window_switched_off"),
    pytest.param(config(num_key_value_heads=3),
                 "num_key_value_heads = 3 does not divide num_attention_heads = 8",
                 id="kv_heads"),
    pytest.param(config(num_hidden_layers=-1), "num_hidden_layers must be a positive integer, got -1",
                 id="layers"),
    pytest.param(config(use_bidirectional_attention=True), "use_bidirectional_attention makes this model's "
                 "attention bidirectional", id="bidirectional"),
    pytest.param(config(is_encoder_decoder=True), "is_encoder_decoder is true", id="encoder_decoder"),
    pytest.param(config(per_layer_config={"02": {"num_key_value_heads": 8}}), "per_layer_config['02']."
                 "num_key_value_heads = 8 differs from num_key_value_heads = 4", id="per_layer_heads"),
    pytest.param(config(per_layer_config={"01": {"sliding_window": 1024}}), "per_layer_config['01']."
                 "sliding_window = 1024 differs from sliding_window = 512", id="per_layer_window"),
])
def test_bad_configs_name_the_key(data, message):
    with pytest.raises(ConfigError) as error:
        read_config(data, where="m/config.json")
    assert message in str(error.value) and str(error.value).startswith("m/config.json: ")


@pytest.mark.parametrize("setup, message", [
    pytest.param(lambda p: p, "is a model directory without a config.json", id="no_config"),
    pytest.param(lambda p: write(p, "{'layers': 2}"), "not a JSON config", id="not_json"),
    pytest.param(lambda p: write(p, "[1, 2]"), "a config is a JSON object, got [1, 2]", id="not_an_object"),
    pytest.param(lambda p: p / "missing.json", "cannot read the config: No such file", id="missing_file"),
])
def test_bad_files_are_refused_with_their_path(tmp_path, setup, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_config(setup(tmp_path))


def test_keys_left_to_the_class_come_from_transformers_or_are_named():
    pytest.importorskip("transformers")
    data = config()
    del data["layer_types"]  # Gemma 3's class derives them: five sliding to one full
    assert [layer.kind for layer in read_config(data).layers] == ["sliding"] * 5 + ["full"]
    del data["model_type"]
    with pytest.raises(ConfigError, match="layer_types is not in the config and its model_type None is not "
                                          "one transformers knows"):
        read_config(data)
    with pytest.raises(ConfigError, match="has no layer_types and its sliding_window is set"):
        read_config({"model_type": "moshi", "num_hidden_layers": 2, "num_attention_heads": 4,
                     "sliding_window": 64})


def test_gemma_3s_default_config_as_transformers_saves_it(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.Gemma3TextConfig().save_pretrained(tmp_path)
    native = read_config(tmp_path)
    assert native.summary() == "22 sliding (window 4,096) and 4 full layers"
    assert [r.layers for r in native.stack.overrides] == [(5, 6), (11, 12), (17, 18), (23, 24)]
