"""The tiny model attends exactly under the compiled pattern, layer by layer and head by head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patternc
from patternc.stack import Override, Stack
from search import ModelConfig, TinyTransformer

N, VOCAB = 24, 11


def model_for(spec, layers=1, heads=2, seed=0, **model):
    stack = spec if isinstance(spec, Stack) else Stack(default=spec, layers=layers, heads=heads)
    cp = patternc.compile(stack, N, block=8)
    torch.manual_seed(seed)
    return TinyTransformer(VOCAB, cp, ModelConfig(d_model=16, head_dim=4, heads=heads, **model)), cp


def influence(model, tokens, position):
    """Which outputs change when the token at ``position`` changes: (n,) bool."""
    with torch.no_grad():
        base = model(tokens)
        changed = tokens.clone()
        changed[0, position] = (changed[0, position] + 1) % VOCAB
        return (model(changed) - base).abs().amax(-1)[0] > 1e-6


def reach_of(cp):
    """Pairs (q, k) where k can reach q through the layers, the token shift included (k -> k + 1)."""
    dense = cp.to_dense().any(axis=1)  # (L, n, n) union of heads
    reach = np.eye(N, dtype=bool) | np.eye(N, k=-1, dtype=bool)  # the previous-token embedding
    for layer in dense:
        reach = reach | (layer.astype(int) @ reach.astype(int) > 0)
    return reach


@pytest.mark.parametrize("attention", ["kernel", "sdpa"])
@pytest.mark.parametrize("spec, layers", [
    pytest.param("causal & window(3)", 1, id="window_1_layer"),
    pytest.param("causal & window(3)", 2, id="window_2_layers"),
    pytest.param("causal & (stride(7) | diagonals([0]))", 2, id="stride"),
    pytest.param("causal & (sink(2) | window(2))", 1, id="sink"),
])
def test_outputs_depend_exactly_on_what_the_pattern_reaches(spec, layers, attention):
    model, cp = model_for(spec, layers=layers, attention=attention)
    tokens = torch.randint(VOCAB, (1, N), generator=torch.Generator().manual_seed(1))
    reach = reach_of(cp)
    for k in range(N):
        assert (influence(model, tokens, k).numpy() == reach[:, k]).all(), f"key {k}"


def test_heads_use_their_own_masks():
    stack = Stack(default="causal & window(2)", layers=1, heads=2,
                  overrides=(Override("causal & diagonals([0, 9])", heads=(1, 2)),))
    model, cp = model_for(stack)
    assert model.blocks[0].attn.pattern is cp and model.blocks[0].attn.layer == 0
    tokens = torch.randint(VOCAB, (1, N), generator=torch.Generator().manual_seed(2))
    assert influence(model, tokens, 3)[12]  # only head 1 links 12 to 3 (offset 9)


@pytest.mark.parametrize("attention", ["kernel", "sdpa"])
def test_rows_without_keys_give_finite_values_and_gradients(attention):
    model, cp = model_for("causal & window(4) - diagonals([0]) - tokens([5])", attention=attention)
    assert not cp.to_dense().any(-1).all()  # some query has no key at all
    tokens = torch.randint(VOCAB, (3, N), generator=torch.Generator().manual_seed(3))
    out = model(tokens)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_two_backends_train_alike():
    stack = Stack(default="causal & (window(5) | sink(2))", layers=2, heads=2)
    tokens = torch.randint(VOCAB, (3, N), generator=torch.Generator().manual_seed(4))
    grads = []
    for attention in ("kernel", "sdpa"):
        model, _ = model_for(stack, heads=2, attention=attention)
        model(tokens).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_wrong_length_and_odd_head_dim_are_refused():
    model, _ = model_for("causal")
    with pytest.raises(ValueError, match="pattern is for n = 24, got sequences of 10"):
        model(torch.zeros(1, 10, dtype=torch.long))
    cp = patternc.compile("causal", N)
    with pytest.raises(ValueError, match=r"model\.head_dim must be even"):
        TinyTransformer(VOCAB, cp, ModelConfig(head_dim=5))


@pytest.mark.parametrize("spec", ["causal & window(3)", "causal & fixed(8, 1)", "~causal | diagonals([5])"])
def test_the_last_layer_at_a_few_rows_gives_the_full_passs_logits_and_gradients(spec):
    """``model(tokens, rows)`` is the full forward pass read at ``rows`` (rows without keys
    included), and so are its gradients: the faster training of majority and hops changes nothing."""
    model, _ = model_for(spec, layers=2)
    tokens = torch.randint(VOCAB, (3, N), generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([0, 4, 20, 23])
    full = model(tokens)[:, rows]
    part = model(tokens, rows)
    torch.testing.assert_close(part, full, atol=1e-6, rtol=1e-6)
    grads = []
    for logits in (full, part):
        model.zero_grad()
        logits.square().sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_training_asks_for_the_rows_with_answers_when_they_are_few():
    from search.evaluate import _asked
    from search.tasks import IGNORE
    labels = np.full((2, 16), IGNORE)
    labels[0, 14], labels[1, 15] = 3, 4
    rows, there = _asked(labels)
    assert rows.tolist() == [14, 15] and there.tolist() == [[3, IGNORE], [IGNORE, 4]]
    labels[:, :8] = 1  # half the sequence answers: the whole pass is cheaper
    rows, there = _asked(labels)
    assert rows is None and there is labels
