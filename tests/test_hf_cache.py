"""A sparsified model's ``generate()`` with its ``PatternCache``: only the keys the pattern still
reads are held, and every step equals recomputing the whole sequence under the dense mask of the
pattern served at the generation's length. Beam search, sampling, left padding, grouped-query and
per-head stacks, chunked prefill, ``use_cache=False``, ``densify`` and bad input."""

from __future__ import annotations

import pytest
import torch

from patternc import Override, Stack
from patternc.errors import ModelError
from tests.hf_models import VOCAB, pattern_masks, reference_logits, tiny_model

hf = pytest.importorskip("patternc.hf")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
BLOCK = 8


def _generate(model, prompt, steps, **kwargs):
    """(sequences (B, n + steps), logits (B, steps, vocab), the cache generate() used)."""
    kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=steps, output_logits=True, return_dict_in_generate=True,
                             **kwargs)
    return out.sequences, torch.stack(out.logits, dim=1), out.cache


def _stepwise(model, spec, prompt: torch.Tensor, steps: int):
    """Greedy decoding by recomputing every position with the dense mask of ``spec`` served at the
    generation's whole length (rows ``:t`` of the pattern at ``n = prompt + steps``)."""
    total = prompt.shape[1] + steps
    masks = pattern_masks(spec, model, total, block=BLOCK)
    ids, logits = prompt, []
    for _ in range(steps):
        t = ids.shape[1]
        last = reference_logits(model, ids, masks[:, :, :t, :t])[:, -1]
        logits.append(last)
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids, torch.stack(logits, dim=1)


def _per_head(model, default: str, other: str) -> Stack:
    """``default`` on every head but the last, which reads ``other``."""
    config = model.config
    heads = config.num_attention_heads
    return Stack(default, layers=config.num_hidden_layers, heads=heads,
                 overrides=(Override(other, heads=(heads - 1, heads)),))


PATTERNS = {
    "window-sink": "causal & (sink(2) | window(5))",
    "stride": "causal & (window(6) | stride(5))",  # keeps every fifth key to the end
    "global": "causal & (global(2) | window(4))",
    "random": "causal & (window(4) | random(2))",  # drawn per block of the length served
    "window-n": "causal & (window(n // 4) | sink(1))",  # its rows depend on the length served
    "per-head": lambda model: _per_head(model, "causal & (sink(1) | window(4))",
                                        "causal & (fixed(8, 2) | window(3))"),
}


def _spec(name, model):
    spec = PATTERNS[name]
    return spec(model) if callable(spec) else spec


@pytest.mark.parametrize("name", PATTERNS)
def test_a_long_generation_equals_the_dense_mask_at_every_step(name):
    """Nothing is evicted that a later query reads: 60 greedy steps past a 20-token prompt, each
    step's logits against the whole sequence recomputed under the dense mask."""
    model = tiny_model("llama")  # 4 query heads read 2 KV heads
    spec = _spec(name, model)
    prompt = torch.randint(1, VOCAB, (1, 20), generator=torch.Generator().manual_seed(1))
    expected_ids, expected_logits = _stepwise(model, spec, prompt, 60)
    hf.sparsify(model, spec, block=BLOCK)
    ids, logits, cache = _generate(model, prompt, 60)
    assert isinstance(cache, hf.PatternCache)
    assert torch.equal(ids, expected_ids)
    assert (logits - expected_logits).abs().max().item() < TOLERANCE
    no_cache = _generate(model, prompt, 60, use_cache=False)
    hf.densify(model)
    assert torch.equal(no_cache[0], expected_ids)


@pytest.mark.parametrize("name", ["window-sink", "per-head", "stride"])
def test_the_cache_holds_what_patternc_kv_predicts(name):
    model = tiny_model("llama")
    spec = _spec(name, model)
    prompt = torch.randint(1, VOCAB, (1, 150), generator=torch.Generator().manual_seed(2))
    hf.sparsify(model, spec, block=BLOCK)
    *_, cache = _generate(model, prompt, 10)
    hf.densify(model)
    memory = cache.memory()
    page = cache.page
    for layer, (held, peak, predicted) in enumerate(
            zip(memory.held_keys, memory.peak_keys, memory.predicted_keys, strict=True)):
        for kv_head, (h, p, want) in enumerate(zip(held, peak, predicted, strict=True)):
            # whole pages, and a page being filled: at most two pages over the exact figure
            assert h <= p <= want + 2 * page, (layer, kv_head, h, p, want)
    written = prompt.shape[1] + 10 - 1  # the last token's keys are never computed
    assert all(h + e == written for held, ev in zip(memory.held_keys, memory.evicted_keys, strict=True)
               for h, e in zip(held, ev, strict=True))
    if name == "stride":  # a stride keeps every fifth key: it saves compute, not all the memory
        assert min(min(held) for held in memory.held_keys) >= written // 5
    else:
        assert memory.ratio < 0.5 and max(max(e) for e in memory.evicted_keys) > 100
    assert memory.held_bytes <= memory.allocated_bytes


def test_per_head_stacks_hold_the_union_of_a_kv_heads_query_heads():
    """The last query head reads fixed(8, 2) columns, and shares its KV head with head 2, which does
    not: only that KV head holds the columns."""
    model = tiny_model("llama")
    prompt = torch.randint(1, VOCAB, (1, 150), generator=torch.Generator().manual_seed(3))
    hf.sparsify(model, _spec("per-head", model), block=BLOCK)
    *_, cache = _generate(model, prompt, 4)
    hf.densify(model)
    for held in cache.memory().held_keys:
        assert held[1] > held[0] + 20, held


def test_chunked_prefill_is_exact_and_holds_the_window_not_the_prompt():
    model = tiny_model("mistral")
    prompt = torch.randint(1, VOCAB, (2, 200), generator=torch.Generator().manual_seed(4))
    hf.sparsify(model, "causal & (sink(2) | window(12))", block=BLOCK)
    whole = _generate(model, prompt, 6, prefill_chunk_size=10_000)
    chunked = _generate(model, prompt, 6, prefill_chunk_size=16)
    hf.densify(model)
    assert torch.equal(whole[0], chunked[0])
    assert (whole[1] - chunked[1]).abs().max().item() < TOLERANCE
    peak = max(max(p) for p in chunked[2].memory().peak_keys)
    assert peak <= 2 + 12 + 16 + 2 * 16, peak  # sinks, window, a chunk, pages: not the 200 tokens


def test_generate_uses_prefill_chunk_by_default_without_changing_the_models_config(monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("patternc.hf.attention"), "PREFILL_CHUNK", 16)
    model = tiny_model("llama")
    hf.sparsify(model, "causal & window(8)", block=BLOCK)
    prompt = torch.randint(1, VOCAB, (1, 200), generator=torch.Generator().manual_seed(5))
    for given in ({}, {"cache": hf.PatternCache(model, max_length=202)}):  # made by generate, or given
        *_, cache = _generate(model, prompt, 2, **given)
        peak = max(max(p) for p in cache.memory().peak_keys)
        assert peak <= 8 + 16 + 2 * 16, (given, peak)  # the window and a chunk: prefilled in chunks
    assert model.generation_config.prefill_chunk_size is None
    hf.densify(model)


def test_beam_search_reorders_the_cache():
    model = tiny_model("qwen2")
    prompt = torch.randint(1, VOCAB, (2, 40), generator=torch.Generator().manual_seed(6))
    hf.sparsify(model, "causal & (sink(2) | window(6))", block=BLOCK)
    with torch.no_grad():
        kwargs = dict(max_new_tokens=8, num_beams=3, num_return_sequences=3, do_sample=False,
                      output_scores=True, return_dict_in_generate=True)
        ours = model.generate(prompt, **kwargs)
        every_key = model.generate(prompt, cache=transformers.DynamicCache(), **kwargs)
    hf.densify(model)
    assert isinstance(ours.cache, hf.PatternCache)
    assert torch.equal(ours.sequences, every_key.sequences)
    torch.testing.assert_close(ours.sequences_scores, every_key.sequences_scores, atol=1e-4, rtol=0)


def test_sampling_draws_what_a_cache_of_every_key_draws():
    model = tiny_model("llama")
    prompt = torch.randint(1, VOCAB, (3, 30), generator=torch.Generator().manual_seed(7))
    hf.sparsify(model, _spec("per-head", model), block=BLOCK)
    torch.manual_seed(0)
    ours = _generate(model, prompt, 10, do_sample=True, top_k=20, temperature=0.8)
    torch.manual_seed(0)
    every_key = _generate(model, prompt, 10, do_sample=True, top_k=20, temperature=0.8,
                          cache=transformers.DynamicCache())
    hf.densify(model)
    assert torch.equal(ours[0], every_key[0])
    assert (ours[1] - every_key[1]).abs().max().item() < TOLERANCE


def test_left_padded_rows_each_get_what_they_get_alone_with_sampling_off():
    model = tiny_model("llama")
    rng = torch.Generator().manual_seed(8)
    prompts = [torch.randint(1, VOCAB, (m,), generator=rng) for m in (33, 9, 33)]
    spec = "causal & (window(6) | stride(5))"
    hf.sparsify(model, spec, block=BLOCK, max_length=64)  # rows taken at one length for every row
    alone = [_generate(model, p[None], 8) for p in prompts]
    ids, mask = torch.zeros(3, 33, dtype=torch.long), torch.zeros(3, 33, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, 33 - len(p):], mask[b, 33 - len(p):] = p, 1
    batch_ids, batch_logits, cache = _generate(model, ids, 8, attention_mask=mask)
    hf.densify(model)
    for b, (own_ids, own_logits, _) in enumerate(alone):
        assert torch.equal(batch_ids[b, 33:], own_ids[0, len(prompts[b]):])
        assert (batch_logits[b] - own_logits[0]).abs().max().item() < TOLERANCE
    assert len(cache.layers[0].caches) == 2  # one per padding length


def test_a_declared_max_length_serves_every_generation_at_that_length():
    model = tiny_model("llama")
    spec = "causal & (window(n // 4) | sink(1))"
    prompt = torch.randint(1, VOCAB, (1, 30), generator=torch.Generator().manual_seed(9))
    masks = pattern_masks(spec, model, 96, block=BLOCK)
    ids = prompt
    for _ in range(5):
        t = ids.shape[1]
        ids = torch.cat([ids, reference_logits(model, ids, masks[:, :, :t, :t])[:, -1:].argmax(-1)], dim=1)
    hf.sparsify(model, spec, block=BLOCK, max_length=96)
    got, *_ = _generate(model, prompt, 5)
    hf.densify(model)
    assert torch.equal(got, ids)


def test_densify_during_generation_stops_it_and_after_gives_the_model_back():
    model = tiny_model("llama")
    prompt = torch.randint(1, VOCAB, (1, 20), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        dense = model.generate(prompt, max_new_tokens=6, do_sample=False)

    class DensifyAtStep2(transformers.LogitsProcessor):
        def __init__(self):
            self.steps = 0

        def __call__(self, input_ids, scores):
            self.steps += 1
            if self.steps == 2:
                hf.densify(model)
            return scores

    hf.sparsify(model, "causal & window(4)", block=BLOCK)
    with pytest.raises(ModelError, match=r"densif|not a sparsified model's"):
        _generate(model, prompt, 6, logits_processor=transformers.LogitsProcessorList([DensifyAtStep2()]))
    assert hf.sparsified(model) is None
    with torch.no_grad():
        again = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(again, dense)
    assert "generate" not in model.__dict__ and "_prepare_cache_for_generation" not in model.__dict__


def test_save_pretrained_of_a_sparsified_model_reloads_the_original(tmp_path):
    """Sparsify changes no config: a saved sparsified model reloads as the model it was."""
    model = tiny_model("mistral")
    ids = torch.randint(1, VOCAB, (1, 40), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        own = model(ids).logits
    def own_settings(config) -> dict:  # the config but for which attention implementation runs
        return {k: v for k, v in config.to_dict().items() if "attn_implementation" not in k}

    config = own_settings(model.config)
    hf.sparsify(model, "causal & (sink(2) | window(5))", block=BLOCK)
    assert own_settings(model.config) == config  # the sliding window too
    model.save_pretrained(tmp_path)
    hf.densify(model)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.sliding_window == 24
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, own, atol=1e-5, rtol=1e-5)


# ---- bad input: refused before the first step, naming both sides ------------------------------------

def _counting_forward(model):
    calls = []
    original = model.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.forward = forward
    return calls


def test_a_generation_longer_than_max_length_fails_before_the_first_step():
    model = tiny_model("llama")
    hf.sparsify(model, "causal & window(8)", block=BLOCK, max_length=50)
    calls = _counting_forward(model)
    prompt = torch.randint(1, VOCAB, (1, 40), generator=torch.Generator().manual_seed(12))
    with pytest.raises(ModelError, match=r"generation of 60 tokens .* max_length = 50"):
        _generate(model, prompt, 20)
    assert calls == []
    hf.densify(model)


def test_a_cache_of_another_model_or_length_is_refused_naming_both():
    model, other = tiny_model("llama"), tiny_model("qwen2")
    hf.sparsify(model, "causal & window(8)", block=BLOCK)
    hf.sparsify(other, "causal & window(8)", block=BLOCK)
    prompt = torch.randint(1, VOCAB, (1, 20), generator=torch.Generator().manual_seed(13))
    with pytest.raises(ModelError, match=r"another model \(LlamaForCausalLM: 2 layers, 2 KV heads.*Qwen2"):
        _generate(other, prompt, 4, cache=hf.PatternCache(model, max_length=64))
    with pytest.raises(ModelError, match=r"generation of 30 tokens does not fit .* max_length = 24"):
        _generate(model, prompt, 10, cache=hf.PatternCache(model, max_length=24))
    stale = hf.PatternCache(model, max_length=64)
    hf.sparsify(model, "causal & window(4)", block=BLOCK)
    with pytest.raises(ModelError, match="sparsified again"):
        _generate(model, prompt, 4, cache=stale)
    hf.densify(model)
    with pytest.raises(ModelError, match="not sparsified"):
        hf.PatternCache(model, max_length=64)
    with pytest.raises(ModelError, match="max_length must be a positive integer"):
        hf.PatternCache(other, max_length=0)
    hf.densify(other)


def test_what_a_pattern_cache_cannot_do_is_refused():
    model = tiny_model("llama")
    hf.sparsify(model, "causal & window(8)", block=BLOCK)
    prompt = torch.randint(1, VOCAB, (1, 20), generator=torch.Generator().manual_seed(14))
    *_, cache = _generate(model, prompt, 3)
    with pytest.raises(ModelError, match="cannot be cropped"):
        cache.crop(2)
    with pytest.raises(ModelError, match="after a real token"):
        mask = torch.ones(1, 25, dtype=torch.long)
        mask[0, 3] = 0  # a hole in the middle: packed or right-padded rows
        model(torch.randint(1, VOCAB, (1, 25)), attention_mask=mask,
              cache=hf.PatternCache(model, max_length=64))
    hf.densify(model)


def test_a_hand_written_loop_with_an_n_dependent_pattern_needs_a_length():
    """Without generate() or a declared max_length, the length a continued cache serves is unknown."""
    model = tiny_model("llama")
    hf.sparsify(model, "causal & (window(n // 4) | sink(1))", block=BLOCK)
    ids = torch.randint(1, VOCAB, (1, 20), generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        out = model(ids, cache=transformers.DynamicCache())
        with pytest.raises(ModelError, match="max_length"):
            model(ids[:, :1], cache=out.cache)
    hf.densify(model)
