"""``generate()`` under a pattern: the prefill runs the pattern, each decode step reads the keys the
pattern allows for its position, and the tokens and logits equal step-by-step recomputation of the
whole sequence with the dense mask (a pattern whose rows do not depend on n, as a window's)."""

from __future__ import annotations

import pytest
import torch

from tests.hf_models import VOCAB, pattern_masks, reference_logits, tiny_model

hf = pytest.importorskip("patternc.hf")

TOLERANCE = 1e-4
BLOCK = 8
STEPS = 12


def _stepwise(model, spec: str, prompt: torch.Tensor, steps: int):
    """Greedy decoding by recomputing every position with the dense mask at each length."""
    ids, logits = prompt, []
    for _ in range(steps):
        last = reference_logits(model, ids, pattern_masks(spec, model, ids.shape[1], block=BLOCK))[:, -1]
        logits.append(last)
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids, torch.stack(logits, dim=1)  # (B, n + steps), (B, steps, vocab)


def _generate(model, prompt, steps, **kwargs):
    out = model.generate(prompt, max_new_tokens=steps, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1)


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("spec", ["causal & window(8)", "causal & (sink(2) | window(5))"])
def test_generate_equals_stepwise_recomputation(family, spec):
    model = tiny_model(family)
    prompt = torch.randint(1, VOCAB, (2, 29), generator=torch.Generator().manual_seed(4))  # past a block edge
    expected_ids, expected_logits = _stepwise(model, spec, prompt, STEPS)
    hf.sparsify(model, spec, block=BLOCK)
    with torch.no_grad():
        ids, logits = _generate(model, prompt, STEPS)
    hf.densify(model)
    assert torch.equal(ids, expected_ids)
    assert (logits - expected_logits).abs().max().item() < TOLERANCE


def test_left_padded_generate_gives_each_row_what_it_gets_alone():
    model = tiny_model("llama")
    rng = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, VOCAB, (m,), generator=rng) for m in (17, 9)]
    hf.sparsify(model, "causal & (sink(3) | window(6))", block=BLOCK)
    with torch.no_grad():
        alone = [_generate(model, p[None], 6) for p in prompts]
        ids = torch.zeros(2, 17, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, 17 - len(p):], mask[b, 17 - len(p):] = p, 1
        batch_ids, batch_logits = _generate(model, ids, 6, attention_mask=mask)
    hf.densify(model)
    for b, (own_ids, own_logits) in enumerate(alone):
        assert torch.equal(batch_ids[b, 17:], own_ids[0, len(prompts[b]):])
        assert (batch_logits[b] - own_logits[0]).abs().max().item() < TOLERANCE


def test_a_static_cache_gives_what_a_dynamic_cache_gives():
    model = tiny_model("qwen2")
    prompt = torch.randint(1, VOCAB, (1, 21), generator=torch.Generator().manual_seed(6))
    hf.sparsify(model, "causal & (sink(1) | window(7))", block=BLOCK)
    with torch.no_grad():
        dynamic = _generate(model, prompt, 5)
        static = _generate(model, prompt, 5, cache_implementation="static")
    hf.densify(model)
    assert torch.equal(dynamic[0], static[0])
    assert (dynamic[1] - static[1]).abs().max().item() < TOLERANCE
