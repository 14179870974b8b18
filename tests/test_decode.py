"""The decode kernel (patternc.kernels.decode): a paged cache that evicts on the pattern's schedule
gives, at every step, what dense attention with the dense mask gives at those rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import patternc
from patternc.errors import KernelInputError, PatternMeaningError
from patternc.kernels.decode import DecodeCache, dense_decode, reference_decode

PATTERNS = [
    pytest.param("causal & (sink(4) | window(24))", 1, id="window_sink"),
    pytest.param("causal & (window(16) | stride(20))", 1, id="stride_keeps_keys"),
    pytest.param("causal & fixed(32, 4)", 1, id="fixed"),
    pytest.param("causal & (window(8) | random(2, seed=1))", 1, id="random_blocks"),
    pytest.param("causal & window(4 * 2**h)", 4, id="per_head_windows"),
    pytest.param("causal & (window(12) | global(3))", 1, id="global"),
]


def tensors(heads, kv_heads, n, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(2, heads, n, d, generator=gen)
    k, v = (torch.randn(2, kv_heads, n, d, generator=gen) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("expr, heads", PATTERNS)
@pytest.mark.parametrize("n, block", [(150, 16), (128, (8, 16))], ids=["ragged", "tall_blocks"])
def test_every_decode_step_equals_the_dense_mask(expr, heads, n, block):
    cp = patternc.compile(patternc.Stack(expr, heads=heads), n=n, block=block)
    q, k, v = tensors(heads, heads, n)
    cache = DecodeCache(cp, batch=2, head_dim=8)
    prompt = 37
    cache.prefill(k[:, :, :prompt], v[:, :, :prompt])
    for t in range(prompt, n):
        cache.append(k[:, :, t: t + 1], v[:, :, t: t + 1])
        got = cache.attend(q[:, :, t: t + 1])
        want = reference_decode(q[:, :, t: t + 1], k[:, :, : t + 1], v[:, :, : t + 1], cp)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"query {t}")


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


def test_the_cache_holds_the_window_and_the_sinks_however_long_the_context():
    n = 131072
    cp = patternc.compile("causal & (window(4096) | sink(64))", n=n)
    cache = DecodeCache(cp, head_dim=1)
    k = torch.zeros(1, 1, n - 1, 1)
    cache.prefill(k, k)
    cache.append(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    budget = patternc.kv(cp).max_live_keys[0][0]
    assert budget == 4160
    # whole blocks: the sinks' block and the window's blocks, at most one block more at each edge
    assert budget <= cache.held_keys() <= budget + 64 + 128 * 2
    assert cache.k.shape[2] * 128 < 8 * budget  # the pool is sized by the schedule, not by n


def test_a_stride_keeps_its_columns_to_the_end():
    cp = patternc.compile("causal & (window(16) | stride(20))", n=400, block=16)
    cache = DecodeCache(cp, head_dim=1)
    cache.prefill(torch.zeros(1, 1, 399, 1), torch.zeros(1, 1, 399, 1))
    held = np.flatnonzero(cache.table >= 0)
    assert {20 * m // 16 for m in range(1, 20)} <= set(held.tolist())  # every stride column's block


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
    cache = DecodeCache(cp, head_dim=4)
    with pytest.raises(KernelInputError, match=r"k and v must both be \(batch 1, kv_heads 1"):
        cache.append(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    cache.prefill(torch.zeros(1, 1, 60, 4), torch.zeros(1, 1, 60, 4))
    with pytest.raises(KernelInputError, match="5 more tokens after 60 pass n = 64"):
        cache.append(torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4))
    with pytest.raises(KernelInputError, match=r"1\.\.60 queries"):
        cache.attend(torch.zeros(1, 1, 61, 4))
