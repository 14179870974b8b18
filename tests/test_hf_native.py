"""`patternc.hf.to_native`: a model whose own config runs a stack gives the logits `sparsify` gives
under the same stack (float32, 1e-4), saves a config that reads back as the stack, leaves the given
model as it was, and refuses what its family cannot express."""

from __future__ import annotations

import pytest
import torch

import patternc
from patternc.errors import ConfigError, ModelError
from patternc.native import LayerAttention, read_config
from patternc.stack import Override, Stack

hf_models = pytest.importorskip("hf_models")
from hf_models import pattern_masks, reference_logits, tiny_model  # noqa: E402
from native_models import tiny_config  # noqa: E402

import patternc.hf  # noqa: E402

transformers = pytest.importorskip("transformers")
N = 100  # longer than every window below, so that windows matter


def _stack(model, *rules: tuple[str, int]) -> Stack:
    config = model.config
    return Stack("causal & window(16)", layers=config.num_hidden_layers, heads=config.num_attention_heads,
                 overrides=tuple(Override(expr, (l, l + 1)) for expr, l in rules))


def _causal_lm(model_type: str, types: list[str]):
    config = tiny_config(model_type, types, window=24, max_position_embeddings=512)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


CASES = [
    pytest.param(lambda: tiny_model("llama"), ("causal",), id="llama"),
    pytest.param(lambda: tiny_model("mistral"), ("causal & window(16)",), id="mistral"),
    pytest.param(lambda: tiny_model("qwen2"), ("causal & window(16)", "causal"), id="qwen2"),
    pytest.param(lambda: _causal_lm("gemma3_text", ["sliding_attention", "full_attention"]),
                 ("causal & window(16)", "causal"), id="gemma3"),
    pytest.param(lambda: _causal_lm("cohere2", ["sliding_attention", "full_attention"]),
                 ("causal & window(16)", "causal"), id="cohere2"),
    pytest.param(lambda: _causal_lm("olmo3", ["sliding_attention", "full_attention"]),
                 ("causal & window(16)", "causal"), id="olmo3"),
]


@pytest.mark.parametrize("make, layers", CASES)
def test_the_native_model_gives_sparsifys_logits(make, layers, tmp_path):
    model = make()
    stack = Stack(layers[0], layers=model.config.num_hidden_layers, heads=model.config.num_attention_heads,
                  overrides=tuple(Override(e, (l, l + 1)) for l, e in enumerate(layers) if e != layers[0]))
    own = model.config.to_dict()
    native = patternc.hf.to_native(model, stack)
    assert model.config.to_dict() == own  # the given model is unchanged
    ids = torch.randint(1, model.config.vocab_size, (2, N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = patternc.hf.sparsify(model, stack)(ids).logits
        patternc.hf.densify(model)
        got = native(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    native.save_pretrained(tmp_path)
    assert [str(layer) for layer in read_config(tmp_path).layers] == list(layers) * (
        model.config.num_hidden_layers // len(layers))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, got, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make, layers", [pytest.param(*case.values, id=case.id) for case in CASES])
def test_the_native_model_gives_the_stacks_dense_mask_logits(make, layers):
    """Independent of sparsify: the native model against eager attention under the stack's dense masks
    (tests/hf_models.py), for the families whose sparsify is being fixed too."""
    model = make()
    stack = Stack(layers[0], layers=model.config.num_hidden_layers, heads=model.config.num_attention_heads,
                  overrides=tuple(Override(e, (l, l + 1)) for l, e in enumerate(layers) if e != layers[0]))
    ids = torch.randint(1, model.config.vocab_size, (1, N), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = patternc.hf.to_native(model, stack)(ids).logits
    expected = reference_logits(model, ids, pattern_masks(stack, model, N))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_what_the_family_cannot_express_is_refused_by_layer():
    llama, mistral, qwen2 = (tiny_model(f) for f in ("llama", "mistral", "qwen2"))
    with pytest.raises(ConfigError, match=r"layer 0 is sliding \(window 16\) .* but LlamaForCausalLM builds "
                                          "masks for full attention only"):
        patternc.hf.to_native(llama, "causal & window(16)")
    with pytest.raises(ConfigError, match=r"layer 1 is full but layer 0 is sliding \(window 16\): "
                                          "MistralConfig has no layer_types"):
        patternc.hf.to_native(mistral, _stack(mistral, ("causal", 1)))
    with pytest.raises(ConfigError, match=r"layer 1, head 0: sink\(4\) in causal & \(sink\(4\) \| "
                                          r"window\(8\)\) is not expressible by hf-config"):
        patternc.hf.to_native(qwen2, _stack(qwen2, ("causal & (sink(4) | window(8))", 1)))
    with pytest.raises(ConfigError, match=r"layer 1 is sliding \(window 8\) but layer 0 is sliding "
                                          r"\(window 16\): hf-config has one sliding_window"):
        patternc.hf.to_native(qwen2, _stack(qwen2, ("causal & window(8)", 1)))
    with pytest.raises(ModelError, match="the stack has 2 layers x 8 heads but Qwen2ForCausalLM has"):
        patternc.hf.to_native(qwen2, Stack("causal", layers=2, heads=4 * 2))


def test_a_window_past_the_context_is_full_attention_there():
    qwen2 = tiny_model("qwen2")  # max_position_embeddings = 512
    native = patternc.hf.to_native(qwen2, _stack(qwen2, ("causal & window(4096)", 1)))
    assert native.config.layer_types == ["sliding_attention", "full_attention"]
    assert patternc.hf.native_stack(native).layers == (LayerAttention("sliding", 16), LayerAttention("full"))


def test_a_sparsified_model_is_refused():
    model = patternc.hf.sparsify(tiny_model("llama"), "causal & window(16)")
    with pytest.raises(ModelError, match="is sparsified"):
        patternc.hf.to_native(model, "causal")
