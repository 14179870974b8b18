"""The ``flex`` backend: FlexAttention with our ``BlockMask`` (a whole sequence) and with a query
range's ``BlockMask`` (a decode step), exact against the dense-mask reference. CUDA runs it through
``torch.compile``; here eager FlexAttention (no minutes of compiling on 2 cores) stands in for it:
the same BlockMask, mask_mod, GQA and scale reach it."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.hf_models import VOCAB, pattern_masks, reference_logits, tiny_model

hf = pytest.importorskip("patternc.hf")
flex_attention = pytest.importorskip("torch.nn.attention.flex_attention").flex_attention

SPEC = "causal & (sink(2) | window(6 * (h + 1)))"


@pytest.fixture(autouse=True)
def eager_flex(monkeypatch):
    from patternc.kernels import dispatch

    def eager(*args, **kwargs):
        with warnings.catch_warnings():  # "flex_attention called without torch.compile": on purpose
            warnings.simplefilter("ignore", UserWarning)
            return flex_attention(*args, **kwargs)

    monkeypatch.setattr(dispatch, "FLEX_ATTENTION", eager)


def test_flex_logits_equal_the_dense_mask_reference():
    model = tiny_model("llama")  # grouped-query heads
    ids = torch.randint(1, VOCAB, (2, 45), generator=torch.Generator().manual_seed(7))
    expected = reference_logits(model, ids, pattern_masks(SPEC, model, 45, block=16))
    with torch.no_grad():
        got = hf.sparsify(model, SPEC, block=16, backend="flex")(ids).logits
    hf.densify(model)
    assert (got - expected).abs().max().item() < 1e-4


def test_flex_decode_steps_run_query_ranges():
    model = tiny_model("mistral")
    prompt = torch.randint(1, VOCAB, (1, 20), generator=torch.Generator().manual_seed(8))
    hf.sparsify(model, SPEC, block=16, backend="flex")
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    hf.densify(model)
    for step, logits in enumerate(out.logits):
        ids = out.sequences[:, :20 + step]
        expected = reference_logits(model, ids, pattern_masks(SPEC, model, ids.shape[1], block=16))[:, -1]
        assert (logits - expected).abs().max().item() < 1e-4
