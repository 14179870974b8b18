"""patternc.hf across transformers' model families: for each family here, ``sparsify`` either runs
the model exactly as eager attention under the pattern's dense masks does (float32 logits, 1e-4),
or refuses up front with a ``ModelError`` that names the feature it cannot apply, and leaves the
model as it was. A family that starts to differ, to crash, or to be refused (or accepted) without
a word fails here.

Each model is a tiny random one of the family's own config class (``tests.native_models``'s
``tiny_config``): 2 to 4 layers of each kind the family has, 4 query heads, windows and chunks of
8 tokens, so that every kind of layer is met on a 40-token sequence.
"""

from __future__ import annotations

import re

import pytest
import torch

from tests.hf_models import pattern_masks, reference_logits
from tests.native_models import tiny_config, transformers

hf = pytest.importorskip("patternc.hf")

TOLERANCE = 1e-4  # float32 logits
N = 40  # five windows of 8: every layer kind's window and chunk is met
CAUSAL = "causal & (sink(2) | window(8))"
BIDIRECTIONAL = "sink(2) | window(8)"  # an encoder's: each query reads itself and 7 keys either side
S, F = "sliding_attention", "full_attention"
FUSED = ("c_attn", "query_key_value", "Wqkv")  # fused q, k, v projections (GPT-2, GPT-NeoX, ModernBERT)
GPT2 = dict(n_embd=32, n_layer=2, n_head=4, n_positions=512)  # GPT-2's own names for the sizes

# (model_type, layer kinds or None, config changes): what each family's attention adds.
DECODERS = [
    pytest.param("gpt2", None, GPT2, id="gpt2-conv1d-fused-qkv"),
    pytest.param("gpt_bigcode", None, dict(GPT2, multi_query=True), id="gpt_bigcode-multi-query"),
    pytest.param("gpt_neox", None, dict(rotary_pct=0.5), id="gpt_neox-partial-rotary"),
    pytest.param("phi", None, dict(partial_rotary_factor=0.5), id="phi-partial-rotary"),
    pytest.param("qwen3", None, {}, id="qwen3-qk-norm"),
    pytest.param("granite", None, dict(attention_multiplier=0.3), id="granite-attention-multiplier"),
    pytest.param("gemma3_text", [S, F], dict(query_pre_attn_scalar=12), id="gemma3-sliding-qk-norm-scalar"),
    pytest.param("cohere2", [S, F], {}, id="cohere2-sliding-nope-full-layers"),
    pytest.param("olmo3", [S, F], {}, id="olmo3-sliding-qk-norm"),
    pytest.param("exaone4", [S, F], {}, id="exaone4-sliding"),
    pytest.param("llama4_text", ["chunked_attention", F], dict(attention_chunk_size=8), id="llama4-chunked"),
    pytest.param("deepseek_v3", None, dict(num_key_value_heads=4, head_dim=4, v_head_dim=16),
                 id="deepseek_v3-mla-v-head-dim"),  # head_dim: the rope part, as its own configs
    pytest.param("diffllama", None, {}, id="diffllama-differential"),
    pytest.param("bert", None, dict(is_decoder=True), id="bert-as-decoder"),
    pytest.param("bart", None, dict(d_model=32, decoder_layers=2, encoder_layers=2, decoder_attention_heads=4,
                                    encoder_attention_heads=4, decoder_ffn_dim=32, encoder_ffn_dim=32),
                 id="bart-causal-lm"),
]

ENCODERS = [
    pytest.param("bert", None, {}, id="bert"),
    pytest.param("modernbert", [F, S], dict(local_attention=16), id="modernbert-global-local"),
    pytest.param("eurobert", None, {}, id="eurobert"),
]

# (model_type, layer kinds, config changes, what the ModelError must name)
REFUSED = [
    pytest.param("gemma2", [S, F], {}, "applies logit soft-capping in attention "
                 "(config.attn_logit_softcapping = 50.0)", id="gemma2-softcapping"),
    pytest.param("vaultgemma", None, {}, "applies logit soft-capping in attention",
                 id="vaultgemma-softcapping"),
    pytest.param("gpt_oss", [S, F], {}, "learns attention-sink logits (a 'sinks' parameter in "
                 "GptOssAttention)", id="gpt_oss-sinks"),
    pytest.param("deepseek_v4", None, {}, "learns attention-sink logits (a 'sinks' parameter in "
                 "DeepseekV4Attention)", id="deepseek_v4-sinks"),
    pytest.param("mimo_v2_flash", None, {}, "MiMoV2FlashAttention passes s_aux= to its attention function",
                 id="mimo_v2_flash-s_aux"),
    pytest.param("inkling_text", None, {}, "InklingAttention passes position_bias= to its attention function",
                 id="inkling-position-bias"),
    # layers 2 and 3 read the keys of layers 0 and 1
    pytest.param("gemma3n_text", [S, F, S, F], dict(num_kv_shared_layers=2),
                 "shares KV caches between layers", id="gemma3n-kv-sharing"),
    # layer 0 is a linear-attention (Gated DeltaNet) layer, which no pattern reaches
    pytest.param("qwen3_next", ["linear_attention", F], {}, "with layer_idx [1] (config.layer_types has "
                 "linear_attention layers, which no pattern describes)", id="qwen3_next-linear-layers"),
    pytest.param("mamba", None, {}, "has no attention layers", id="mamba-state-space"),
    # full-attention layers have a head size of their own (global_head_dim)
    pytest.param("gemma4_text", [S, F], dict(per_layer_config={"1": {"head_dim": 16}}),
                 "sets its attention sizes per layer", id="gemma4-per-layer-sizes"),
    pytest.param("deepseek_v32", None, {}, "passes indices= to its attention function",
                 id="deepseek_v32-learned-key-selection"),
    # recurrent loops of layers: earlier loops read the KV the last loop cached
    pytest.param("dory", [S, F, S], dict(head_dim=16), "reads keys and values other layers cached",
                 id="dory-looped-layers"),
    pytest.param("doge", None, {}, "builds on the attention mask itself (its forward passes "
                 "attention_mask=attn_mask)", id="doge-dynamic-mask"),
]


def _model(model_type: str, layer_types, changes: dict, auto):
    """A tiny random model of the family, float32, eval mode; q and k sharpened so masks matter."""
    config = tiny_config(model_type, layer_types, window=8, **changes)
    torch.manual_seed(0)
    model = auto.from_config(config).eval()
    with torch.no_grad():  # random init attends nearly uniformly: sharpen q and k (as tests.hf_models)
        for module in model.modules():
            for name in ("q_proj", "k_proj", "query", "key", *FUSED):
                if isinstance(getattr(module, name, None), torch.nn.Linear):
                    getattr(module, name).weight.mul_(4.0)
    return model


def _ids(model) -> torch.Tensor:
    vocab = model.config.get_text_config(decoder=True).vocab_size
    return torch.randint(3, vocab, (1, N), generator=torch.Generator().manual_seed(1))


def _logits_equal_the_reference(model, spec: str) -> None:
    ids = _ids(model)
    with torch.no_grad():
        own = model(ids).logits
    expected = reference_logits(model, ids, pattern_masks(spec, model, N))
    assert (expected - own).abs().max().item() > 1e-3  # the pattern changes this model: a test that can fail
    hf.sparsify(model, spec)
    assert hf.sparsified(model).shape.causal == (spec == CAUSAL)  # a decoder is seen as one, an encoder not
    try:
        with torch.no_grad():
            for kwargs in ({}, {"use_cache": False}):
                got = model(ids, **kwargs).logits
                assert (got - expected).abs().max().item() < TOLERANCE, kwargs
    finally:
        hf.densify(model)


@pytest.mark.parametrize("model_type, layer_types, changes", DECODERS)
def test_a_decoder_runs_exactly_under_the_pattern(model_type, layer_types, changes):
    model = _model(model_type, layer_types, changes, transformers.AutoModelForCausalLM)
    _logits_equal_the_reference(model, CAUSAL)


@pytest.mark.parametrize("model_type, layer_types, changes", ENCODERS)
def test_an_encoder_runs_exactly_under_a_bidirectional_pattern(model_type, layer_types, changes):
    model = _model(model_type, layer_types, changes, transformers.AutoModelForMaskedLM)
    _logits_equal_the_reference(model, BIDIRECTIONAL)


@pytest.mark.parametrize("model_type, layer_types, changes, feature", REFUSED)
def test_a_feature_no_pattern_applies_is_refused_up_front(model_type, layer_types, changes, feature):
    model = _model(model_type, layer_types, changes, transformers.AutoModelForCausalLM)
    own = model.config._attn_implementation
    with pytest.raises(hf.ModelError, match=re.escape(feature)):
        hf.sparsify(model, CAUSAL)
    assert model.config._attn_implementation == own  # untouched: nothing to densify
    assert hf.sparsified(model) is None
    assert not [m for m in model.modules() if hasattr(m, "_patternc_attention")]
    assert "generate" not in model.__dict__


# Families whose attention runs exactly under the pattern but whose code a PatternCache cannot serve:
# a latent KV cache (multi-head latent attention caches keys of another shape than it attends
# with), or keys worked on after the cache (differential attention splits them).
OWN_CACHE = [
    pytest.param("deepseek_v3", dict(num_key_value_heads=4, head_dim=4, v_head_dim=16), id="deepseek_v3-mla"),
    pytest.param("diffllama", {}, id="diffllama-differential"),
]


def _generate(model, **kwargs) -> torch.Tensor:
    return model.generate(_ids(model)[:, :24], max_new_tokens=6, do_sample=False, **kwargs)


@pytest.mark.parametrize("model_type, changes", OWN_CACHE)
def test_a_model_the_pattern_cache_cannot_serve_generates_from_its_own_cache(model_type, changes):
    model = hf.sparsify(_model(model_type, None, changes, transformers.AutoModelForCausalLM), CAUSAL)
    own_cache = "a PatternCache cannot serve .* keeps every key in the model's own cache"
    with pytest.warns(UserWarning, match=own_cache):
        cached = _generate(model)
    assert torch.equal(cached, _generate(model, use_cache=False))  # the pattern still decides, exactly
    with pytest.raises(hf.ModelError, match=r"a PatternCache cannot serve .* generate without cache="):
        _generate(model, cache=hf.PatternCache(model, 30))


def test_multi_query_attention_is_served_by_the_pattern_cache_with_one_kv_head(recwarn):
    model = hf.sparsify(_model("gpt_bigcode", None, dict(GPT2, multi_query=True),
                               transformers.AutoModelForCausalLM), CAUSAL)
    assert hf.sparsified(model).shape.kv_heads == 1  # read from the modules: the config names none
    out = model.generate(_ids(model)[:, :24], max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    assert isinstance(out.cache, hf.PatternCache)
    assert not [w for w in recwarn if "patternc" in str(w.message)]
    assert len(out.cache.memory().held_keys[0]) == 1
    assert torch.equal(out.sequences, _generate(model, use_cache=False))


def test_a_masked_lm_gets_no_generate_of_ours():
    model = hf.sparsify(_model("bert", None, {}, transformers.AutoModelForMaskedLM), BIDIRECTIONAL)
    assert "generate" not in model.__dict__ and not hasattr(model, "generate")


def test_cross_attention_to_an_encoder_is_refused_naming_it():
    model = _model("bart", None, DECODERS[-1].values[2], transformers.AutoModelForCausalLM)
    hf.sparsify(model, CAUSAL)
    encoder = torch.randn(1, 5, model.config.d_model)
    with pytest.raises(hf.ModelError, match=r"BartAttention \(layer 0\) attends to an encoder's states "
                                            r"\(cross-attention\)"):
        model(_ids(model), encoder_hidden_states=encoder)
    hf.densify(model)
    assert model(_ids(model), encoder_hidden_states=encoder).logits.shape[1] == N  # its own again
