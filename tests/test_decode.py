"""The decode kernel (patternc.kernels.decode): a paged cache that evicts on the pattern's schedule
gives, at every step, what dense attention with the dense mask gives at those rows; it holds what
``patternc.kv`` says a decoder must hold, per KV head, and no more than page-rounding adds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patternc
from patternc.errors import KernelInputError, PatternMeaningError, PatternSizeError
from patternc.kernels.decode import DecodeCache, dense_decode, reference_decode
from patternc.primitives import PRIMITIVES

PATTERNS = [
    pytest.param("causal & (sink(4) | window(24))", 1, id="window_sink"),
    pytest.param("causal & (window(16) | stride(20))", 1, id="stride_keeps_keys"),
    pytest.param("causal & fixed(32, 4)", 1, id="fixed"),
    pytest.param("causal & (window(8) | random(2, seed=1))", 1, id="random_blocks"),
    pytest.param("causal & window(4 * 2**h)", 4, id="per_head_windows"),
    pytest.param("causal & (window(12) | global(3))", 1, id="global"),
]

# One causal use of every primitive (test_every_primitive_has_a_decode_case keeps this complete): the
# cache evaluates each one's predicate on the positions it holds, at lengths that are not multiples
# of the block or the page.
EVERY_PRIMITIVE = {
    "all": "causal & all",
    "none": "causal & (none | window(3))",
    "causal": "causal",
    "window": "causal & window(9)",
    "band": "causal & band(2, 11)",
    "dilated": "causal & dilated(5, 3)",
    "stride": "causal & stride(7)",
    "diagonals": "causal & diagonals([0, 3, 17, 40])",
    "chunk": "causal & chunk(13)",
    "fixed": "causal & fixed(12, 3)",
    "sink": "causal & (sink(5) | window(2))",
    "global": "causal & (global(3) | window(4))",
    "tokens": "causal & (tokens([2, 30, 61]) | window(3))",
    "columns": "causal & (columns([1, 29, 60]) | window(2))",
    "prefix": "causal & (prefix(20) | window(6))",
    "random": "causal & (random(2, seed=5) | window(3))",
    "documents": "causal & documents([0, 19, 44])",
    "neighborhood": "causal & neighborhood([9, 8], [3, 3])",
}


def tensors(heads, kv_heads, n, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, n, d, generator=gen)
    k, v = (torch.randn(2, kv_heads, n, d, generator=gen) for _ in range(2))
    return q, k, v


def walk(cp, cache, q, k, v, prompt):
    """Prefill ``prompt`` tokens, then check every later decode step against the dense mask."""
    cache.prefill(k[:, :, :prompt], v[:, :, :prompt])
    for t in range(prompt, cp.n):
        cache.append(k[:, :, t: t + 1], v[:, :, t: t + 1])
        got = cache.attend(q[:, :, t: t + 1])
        want = reference_decode(q[:, :, t: t + 1], k[:, :, : t + 1], v[:, :, : t + 1], cp)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"query {t}")


@pytest.mark.parametrize("expr, heads", PATTERNS)
@pytest.mark.parametrize("n, block", [(150, 16), (128, (8, 16))], ids=["ragged", "tall_blocks"])
def test_every_decode_step_equals_the_dense_mask(expr, heads, n, block):
    cp = patternc.compile(patternc.Stack(expr, heads=heads), n=n, block=block)
    q, k, v = tensors(heads, heads, n)
    walk(cp, DecodeCache(cp, batch=2, head_dim=8), q, k, v, prompt=37)


def test_every_primitive_has_a_decode_case():
    assert set(EVERY_PRIMITIVE) == set(PRIMITIVES)


@pytest.mark.parametrize("name", sorted(EVERY_PRIMITIVE))
@pytest.mark.parametrize("block, page", [(16, 16), (8, 5)], ids=["block16_page16", "block8_page5"])
def test_every_primitive_decodes_exactly_at_every_step(name, block, page):
    n = 72  # not a multiple of the block, and random's draw, tokens and columns reach its last block
    cp = patternc.compile(EVERY_PRIMITIVE[name], n=n, block=block)
    q, k, v = tensors(1, 1, n)
    walk(cp, DecodeCache(cp, batch=2, head_dim=8, page=page), q, k, v, prompt=block)  # a block-aligned prompt


def test_chunks_and_grouped_query_heads():
    """Chunked prefill (several query blocks per call) and 4 query heads over 2 KV heads."""
    cp = patternc.compile(patternc.Stack("causal & (sink(2) | window(10 + 6 * h))", heads=4, kv_heads=2),
                          n=200, block=16)
    q, k, v = tensors(4, 2, 200)
    cache = DecodeCache(cp, batch=2, head_dim=8)
    assert cache.kv_heads == 2
    start = 0
    for stop in (5, 60, 61, 97, 140, 200):
        cache.append(k[:, :, start:stop], v[:, :, start:stop])
        got = cache.attend(q[:, :, start:stop])
        want = reference_decode(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], cp)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"queries [{start}, {stop})")
        start = stop


@pytest.mark.parametrize("expr, grows", [("causal & (sink(4) | window(24))", True),
                                         ("causal & (window(16) | stride(20))", False)])  # sized for all
def test_decoding_after_chunks_shrinks_the_pool_back_and_stays_exact(expr, grows):
    """A chunk holds its keys and the window's at once, so the pool grows; the first decode step
    after it moves the held pages to the front and shrinks the pool to what decoding needs."""
    cp = patternc.compile(expr, n=300, block=16)
    q, k, v = tensors(1, 1, 300)
    cache = DecodeCache(cp, batch=2, head_dim=8)
    decode_bytes = cache.bytes
    start = 0
    for stop in (100, 200, 230):  # two chunks of 100, then 30 tokens to decode one at a time
        cache.append(k[:, :, start:stop], v[:, :, start:stop])
        cache.attend(q[:, :, start:stop])
        start = stop
    assert (cache.bytes > decode_bytes) == grows  # the chunks grew the window's pool
    for t in range(230, 300):
        cache.append(k[:, :, t: t + 1], v[:, :, t: t + 1])
        got = cache.attend(q[:, :, t: t + 1])
        want = reference_decode(q[:, :, t: t + 1], k[:, :, : t + 1], v[:, :, : t + 1], cp)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"query {t}")
        assert cache.bytes == decode_bytes, t  # back to the schedule's size from the first step on


def test_kv_heads_with_other_patterns_hold_their_own_keys():
    """Each KV head keeps the union of what its query heads read, not the layer's union: a global
    head's KV head keeps every key, the windowed KV heads keep their windows."""
    stack = patternc.Stack.from_dict({"heads": 4, "default": "causal & window(8)", "overrides": [
        {"heads": 0, "expr": "causal & (window(8) | stride(4))"}]})
    n = 300
    cp = patternc.compile(stack, n=n, block=16)
    q, k, v = tensors(4, 4, n)
    cache = DecodeCache(cp, batch=2, head_dim=8, page=8)
    assert len(cache.pools) == 2  # KV heads 1-3 share one page table
    walk(cp, cache, q, k, v, prompt=40)
    report = patternc.kv(cp)
    # stride(4) keeps every fourth key to the end, packed in pages of their own
    assert n // 4 <= cache.held_keys(0) <= report.max_live_keys[0][0] + 2 * 8
    for g in (1, 2, 3):
        assert report.max_live_keys[0][g] <= cache.peak_keys(g) <= report.max_live_keys[0][g] + 2 * 8
        assert cache.held_keys(g) <= 8 + 8  # the window's page and the newest
    assert cache.held_keys() == sum(cache.held_keys(g) for g in range(4))
    assert cache.evicted_keys(1) == n - cache.held_keys(1)


def test_a_row_that_reads_few_held_keys_gathers_them():
    """A stride keeps every key, but a step reads n / s of them: it gathers those, and stays exact."""
    cp = patternc.compile("causal & stride(32)", n=1024, block=64)
    q, k, v = tensors(1, 1, 1024)
    cache = DecodeCache(cp, batch=2, head_dim=8)
    cache.prefill(k[:, :, :1023], v[:, :, :1023])
    cache.append(k[:, :, 1023:], v[:, :, 1023:])
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append(k.shape[2])
        return original(q, k, v, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        got = cache.attend(q[:, :, 1023:])
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    assert calls == [32]  # the 32 keys it reads, not the 1,024 held
    torch.testing.assert_close(got, reference_decode(q[:, :, 1023:], k, v, cp), atol=1e-5, rtol=1e-5)


def test_the_cache_holds_the_window_and_the_sinks_however_long_the_context():
    n = 131072
    cp = patternc.compile("causal & (window(4096) | sink(64))", n=n)
    cache = DecodeCache(cp, head_dim=1)
    k = torch.zeros(1, 1, n - 1, 1)
    cache.prefill(k, k)
    cache.append(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    budget = patternc.kv(cp).max_live_keys[0][0]
    assert budget == 4160
    # whole pages: the sinks' page and the window's pages, at most one page more at each edge
    assert budget <= cache.held_keys() <= budget + 2 * 16
    assert cache.bytes <= 1.1 * 2 * 4 * budget  # the pool is sized by the schedule, not by n


@pytest.mark.parametrize("expr", ["causal & (window(16) | stride(20))", "causal & (window(8) | fixed(32, 2))",
                                  "causal & (window(16) | random(2))"])
def test_keys_kept_to_the_end_pack_into_pages_of_their_own(expr):
    """A stride keeps one key in 20 to the end: those keys share pages, so the cache holds about the
    keys the pattern reads (``patternc.kv``), not every page a column touched."""
    n = 2000
    cp = patternc.compile(expr, n=n, block=16)
    cache = DecodeCache(cp, head_dim=1)
    cache.prefill(torch.zeros(1, 1, n - 1, 1), torch.zeros(1, 1, n - 1, 1))
    pool = cache.pools[0]
    held = set(pool.positions[pool.positions >= 0].tolist())
    later = patternc.kv(cp).last_reads(0, 0) >= n - 1  # what the last query may read
    assert set(np.flatnonzero(later[: n - 1]).tolist()) <= held  # every one of them is held
    budget = patternc.kv(cp).max_live_keys[0][0]
    assert cache.held_keys() <= budget + 2 * 16
    assert pool.held_pages() * 16 <= budget + 3 * 16  # the pages are full, but for a few open ones


def test_select_reorders_the_batch_as_beam_search_does():
    cp = patternc.compile("causal & (sink(2) | window(10))", n=64, block=8)
    q, k, v = tensors(1, 1, 64)
    cache = DecodeCache(cp, batch=2, head_dim=8)
    cache.append(k[:, :, :40], v[:, :, :40])
    cache.select(torch.tensor([1, 1, 0]))
    assert cache.batch == 3
    order = torch.tensor([1, 1, 0])
    cache.append(k[order, :, 40:41], v[order, :, 40:41])
    want = reference_decode(q[order, :, 40:41], k[order, :, :41], v[order, :, :41], cp)
    torch.testing.assert_close(cache.attend(q[order, :, 40:41]), want, atol=1e-5, rtol=1e-5)


def test_dense_decode_is_sdpa_over_the_whole_cache():
    q, k, v = tensors(2, 2, 64)
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(dense_decode(q[:, :, -1:], k, v), full[:, :, -1:])
    torch.testing.assert_close(dense_decode(q[:, :, -5:], k, v), full[:, :, -5:])


def test_bad_input_names_the_value():
    cp = patternc.compile("causal & window(8)", n=64, block=16)
    with pytest.raises(PatternMeaningError, match="not causal"):
        DecodeCache(patternc.compile("window(8)", n=64, block=16))
    with pytest.raises(KernelInputError, match="head_dim must be a positive integer, got 0"):
        DecodeCache(cp, head_dim=0)
    with pytest.raises(KernelInputError, match="dtype must be one of"):
        DecodeCache(cp, dtype=torch.int64)
    with pytest.raises(PatternSizeError, match="bytes of the KV pool"):
        DecodeCache(cp, batch=10**9, head_dim=10**6)  # refused before anything is allocated
    with pytest.raises(KernelInputError, match="must be a compiled pattern"):
        DecodeCache("causal & window(8)")
    cache = DecodeCache(cp, head_dim=4)
    with pytest.raises(KernelInputError, match=r"k and v must both be \(batch 1, kv_heads 1"):
        cache.append(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    with pytest.raises(KernelInputError, match=r"k and v must both be"):
        cache.append(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))  # 3-d
    with pytest.raises(KernelInputError, match="k has dtype float64 but the cache holds float32"):
        wide = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
        cache.append(wide, wide)
    cache.prefill(torch.zeros(1, 1, 60, 4), torch.zeros(1, 1, 60, 4))
    with pytest.raises(KernelInputError, match="5 more tokens after 60 pass n = 64"):
        cache.append(torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4))
    with pytest.raises(KernelInputError, match=r"1\.\.60 queries"):
        cache.attend(torch.zeros(1, 1, 61, 4))
    with pytest.raises(KernelInputError, match="start before 60, the first position of the last append"):
        cache.attend(torch.zeros(1, 1, 1, 4))  # query 59 was the prompt's: computed elsewhere
    cache.append(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    with pytest.raises(KernelInputError, match="q has dtype bfloat16"):
        cache.attend(torch.zeros(1, 1, 1, 4, dtype=torch.bfloat16))
    with pytest.raises(KernelInputError, match="scale must be a finite number"):
        cache.attend(torch.zeros(1, 1, 1, 4), scale=float("nan"))
    with pytest.raises(KernelInputError, match="must be a 4-d tensor"):
        cache.attend(torch.zeros(1, 1, 4))
    with pytest.raises(KernelInputError, match=r"rows must lie in \[0, 1\)"):
        cache.select(torch.tensor([1]))
