"""What ``patternc.hf`` refuses, each with a ``ModelError`` (a ``PatternError``) that names both
sides, before any wrong output: and a refused ``sparsify`` leaves the model as it was."""

from __future__ import annotations

import re

import pytest
import torch

import patternc
from patternc.stack import Stack
from tests.hf_models import VOCAB, tiny_model, transformers

hf = pytest.importorskip("patternc.hf")


@pytest.fixture
def model():
    return tiny_model("llama")


def _untouched(model):
    assert model.config._attn_implementation == "sdpa"
    assert hf.sparsified(model) is None


@pytest.mark.parametrize("spec, message", [
    pytest.param(Stack("causal", layers=3, heads=4), "the stack has 3 layers x 4 heads but LlamaForCausalLM "
                 "has 2 layers x 4 query heads (2 KV heads)", id="layers"),
    pytest.param(Stack("causal", layers=2, heads=8), "has 2 layers x 8 heads but LlamaForCausalLM has 2 "
                 "layers x 4 query heads", id="heads"),
    pytest.param(Stack("window(4)", layers=2, heads=4, causal=False), "is declared causal: false but "
                 "LlamaForCausalLM is a causal model", id="declared_non_causal"),
    pytest.param("causal & window(4) | sink(2)", "lets a query read later keys at n = 512 (layer 0 head 0: "
                 "causal & window(4) | sink(2)) but LlamaForCausalLM is a causal model: write causal & "
                 "(causal & window(4) | sink(2))", id="undeclared_non_causal"),
])
def test_a_stack_that_does_not_fit_the_model(model, spec, message):
    with pytest.raises(hf.ModelError, match=re.escape(message)):
        hf.sparsify(model, spec)
    _untouched(model)


def test_errors_are_pattern_errors():
    assert issubclass(hf.ModelError, patternc.PatternError)
    assert issubclass(hf.ModelError, ValueError)


def test_a_bad_expression_is_the_compilers_error(model):
    with pytest.raises(patternc.PatternMeaningError, match="unknown primitive 'windw'"):
        hf.sparsify(model, "causal & windw(8)")
    _untouched(model)


def test_an_unknown_backend(model):
    unknown = "sparsify's backend must be one of auto, kernel, flex, sdpa, got 'triton'"
    with pytest.raises(patternc.PatternError, match=unknown):
        hf.sparsify(model, "causal", backend="triton")


def test_a_model_without_the_attention_interface():
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)
    with pytest.raises(hf.ModelError, match="BloomForCausalLM does not route attention through transformers' "
                                            "AttentionInterface"):
        hf.sparsify(transformers.BloomForCausalLM(config), "causal")


def test_not_a_transformers_model():
    with pytest.raises(hf.ModelError, match=r"transformers models \(a PreTrainedModel\), got a Linear"):
        hf.sparsify(torch.nn.Linear(2, 2), "causal")


def test_densify_what_was_never_sparsified(model):
    with pytest.raises(hf.ModelError, match="LlamaForCausalLM is not sparsified: nothing to densify"):
        hf.densify(model)


def test_the_attention_on_a_model_that_was_not_sparsified(model):
    hf.sparsify(tiny_model("llama"), "causal")  # registers the 'patternc' attention
    model.set_attn_implementation("patternc")
    with pytest.raises(hf.ModelError, match=r"LlamaAttention \(layer 0\) runs the 'patternc' attention "
                                            r"but its model was not sparsified"):
        model(torch.ones(1, 4, dtype=torch.long))


def test_packed_sequences_are_refused(model):
    hf.sparsify(model, "causal & window(4)")
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])
    with pytest.raises(hf.ModelError, match=r"position ids restart inside a row \(packed sequences\)"):
        model(torch.ones(1, 6, dtype=torch.long), position_ids=positions)


def test_a_cache_that_evicts_keys_is_refused():
    model = tiny_model("mistral")  # sliding_window 24: its own cache keeps the last 24 keys
    evicting = transformers.DynamicCache(config=transformers.MistralConfig(**model.config.to_dict()))
    hf.sparsify(model, "causal & (sink(1) | window(4))")
    ids = torch.randint(1, VOCAB, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, cache=evicting, use_cache=True)
        with pytest.raises(hf.ModelError, match="a query at position 30 meets only 24 key slots: the cache"):
            model(ids[:, :1], cache=evicting, use_cache=True)


def test_a_custom_4d_mask_is_refused(model):
    hf.sparsify(model, "causal")
    with pytest.raises(hf.ModelError, match=r"takes a padding mask \(batch, tokens\) as attention_mask, got "
                                            r"\(1, 1, 5, 5\)"):
        model(torch.ones(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))


def test_padding_between_real_tokens_is_refused_as_a_gap_not_as_packed_sequences(model):
    hf.sparsify(model, "causal & window(4)")
    ids = torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    holed = torch.ones(2, 8, dtype=torch.long)
    holed[1, 3] = 0
    gap = r"batch row 1 has padding between real tokens \(attention_mask is 0 at slot 3, with real tokens on"
    with pytest.raises(hf.ModelError, match=gap):
        model(ids, attention_mask=holed)
    right = torch.ones(2, 8, dtype=torch.long)
    right[1, 5:] = 0  # padding on one side is a sequence of its own
    with torch.no_grad():
        padded = model(ids, attention_mask=right).logits[1, :5]
        torch.testing.assert_close(padded, model(ids[1:, :5]).logits[0], atol=1e-5, rtol=1e-5)


def test_attention_dropout_in_training():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=4, attention_dropout=0.1)
    model = hf.sparsify(transformers.LlamaForCausalLM(config).train(), "causal")
    with pytest.raises(hf.ModelError, match=r"asks for attention dropout 0\.1"):
        model(torch.ones(1, 4, dtype=torch.long))
