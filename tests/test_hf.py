"""patternc.hf on tiny random Llama, Qwen2 and Mistral models: logits under ``sparsify`` equal an
independent dense-mask reference per layer and head (float32, 1e-4), ``densify`` gives the model's
own logits back bit for bit, and padding is removed, not attended."""

from __future__ import annotations

import pytest
import torch

from tests.hf_models import FAMILIES, VOCAB, model_stack, pattern_masks, reference_logits, tiny_model

hf = pytest.importorskip("patternc.hf")

TOLERANCE = 1e-4  # float32 logits
N = 100  # not a multiple of the block: ragged last block row and column

PATTERNS = [
    # per-head windows (h), sinks: FULL and PARTIAL blocks, heads of one KV group that differ
    pytest.param("causal & (sink(4) | window(8 * (h + 1)))", id="per_head_windows"),
    # a dense first layer, strided heads elsewhere (l): layers that differ
    pytest.param("causal & (window(12) | stride(7) | global(l * 3 + 1))", id="per_layer"),
    pytest.param("causal & (window(16) | random(1, seed=3))", id="random_blocks"),
    # query 0 has no key: every backend gives it 0
    pytest.param("causal & window(6) - diagonals([0])", id="empty_row"),
]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(1, VOCAB, (2, N), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backend", ["auto", "kernel", "sdpa"])
@pytest.mark.parametrize("spec", PATTERNS)
def test_logits_equal_the_dense_mask_reference(model, ids, spec, backend):
    expected = reference_logits(model, ids, pattern_masks(spec, model, N, block=16))
    hf.sparsify(model, spec, block=16, backend=backend)
    try:
        with torch.no_grad():
            got = model(ids).logits
    finally:
        hf.densify(model)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() < TOLERANCE


def test_a_stack_file_with_the_models_shape(ids):
    model = tiny_model("llama")
    stack = model_stack("causal & (sink(2) | window(10))", model)
    expected = reference_logits(model, ids, pattern_masks(stack, model, N, block=32))
    with torch.no_grad():
        got = hf.sparsify(model, stack, block=32)(ids).logits
    assert (got - expected).abs().max().item() < TOLERANCE
    assert hf.sparsified(model).stack == stack


@pytest.mark.parametrize("family", FAMILIES)
def test_densify_gives_back_the_models_own_logits_bit_for_bit(family, ids):
    model = tiny_model(family)
    own = model.config._attn_implementation
    with torch.no_grad():
        before = model(ids).logits
        hf.sparsify(model, "causal & window(8)", block=16)
        sparse = model(ids).logits
        hf.sparsify(model, "causal & (sink(1) | window(4))", block=16)  # a second pattern replaces the first
        hf.densify(model)
        after = model(ids).logits
    assert not torch.equal(before, sparse)  # the pattern did change the model while it was on
    assert torch.equal(before, after)
    assert model.config._attn_implementation == own
    assert hf.sparsified(model) is None
    if family == "mistral":  # its own sliding window is back, for the mask and the cache
        assert model.config.sliding_window == 24


def test_padding_is_removed_each_row_gets_what_it_gets_alone():
    """Left and right padding: the pattern applies to each sequence's own tokens (sink(3) is its
    first 3 real tokens), a padding key is never read, and the real positions' logits equal the
    sequence's logits alone."""
    model = tiny_model("llama")
    spec = "causal & (sink(3) | window(9))"
    rng = torch.Generator().manual_seed(2)
    lengths = (40, 23, 31)
    seqs = [torch.randint(1, VOCAB, (m,), generator=rng) for m in lengths]
    hf.sparsify(model, spec, block=8)
    with torch.no_grad():
        alone = [model(s[None]).logits[0] for s in seqs]
        for side in ("left", "right"):
            ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, s in enumerate(seqs):
                span = slice(max(lengths) - len(s), None) if side == "left" else slice(0, len(s))
                ids[b, span], mask[b, span] = s, 1
            logits = model(ids, attention_mask=mask).logits
            for b in range(len(seqs)):
                real = logits[b][mask[b].bool()]
                assert (real - alone[b]).abs().max().item() < TOLERANCE, (side, b)
    hf.densify(model)


def test_gradients_flow_through_the_kernel():
    model = tiny_model("qwen2")
    ids = torch.randint(1, VOCAB, (1, 64), generator=torch.Generator().manual_seed(3))
    spec = "causal & (sink(2) | window(12))"

    def grads(run):
        model.zero_grad()
        torch.nn.functional.cross_entropy(run()[0, :-1], ids[0, 1:]).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    masks = pattern_masks(spec, model, 64, block=16)
    model.set_attn_implementation("patternc_test_dense_mask")
    from tests import hf_models

    for module in model.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            setattr(module, hf_models._MASKS, masks)
    expected = grads(lambda: model(ids, use_cache=False).logits)
    model.set_attn_implementation("sdpa")
    hf.sparsify(model, spec, block=16, backend="kernel")
    got = grads(lambda: model(ids).logits)
    hf.densify(model)
    assert (got - expected).abs().max().item() < 1e-4
