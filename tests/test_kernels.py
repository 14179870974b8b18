"""The reference block-sparse kernel against dense masked SDPA and eager FlexAttention, and the
backend registry.

Rows with no allowed key are compared nowhere with SDPA (it gives NaN there); our kernel must give
exactly 0 on them.
"""

from __future__ import annotations

import pathlib
import shutil
import warnings

import numpy as np
import pytest
import torch
from stacks import per_head_stack
from torch.nn.attention import flex_attention as flex

import patternc
from patternc.kernels import block_sparse_attention, causal_sdpa, compiled_flex, prepare

ROOT = pathlib.Path(__file__).resolve().parents[1]
D = 16  # head dimension


CASES = [
    pytest.param("causal & window(40)", 256, 32, 0, id="window"),
    pytest.param("causal & (window(37) | global(5))", 200, (32, 16), 0, id="causal_global_rect"),
    pytest.param("causal & stride(9)", 150, 16, 0, id="stride"),
    pytest.param("random(2, seed=5) | diagonals([0])", 300, 64, 0, id="random_ragged"),
    pytest.param(per_head_stack(), 200, (32, 16), 0, id="per_head_layer0"),
    pytest.param(per_head_stack(), 200, (16, 32), 1, id="per_head_layer1"),
    pytest.param("~causal", 100, (16, 32), 0, id="empty_last_row"),
    pytest.param("diagonals([5]) | tokens([70])", 90, 16, 0, id="empty_first_rows"),
    pytest.param("causal", 77, (8, 24), 0, id="causal_non_multiple"),
    pytest.param(str(ROOT / "conf/pattern/longformer.yaml"), 256, None, 6, id="longformer_layer6"),
]


def qkv(heads, n, dtype=torch.float32, seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, D, generator=gen).to(dtype) for _ in range(3)]


def dense_reference(q, k, v, cp, layer):
    mask = torch.from_numpy(cp.to_dense(layer=layer))  # (H, n, n)
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return out, mask.any(-1)  # (B, H, n, d), (H, n) rows with a key


@pytest.mark.parametrize("spec, n, block, layer", CASES)
@pytest.mark.parametrize("budget", [1 << 24, 3000], ids=["one_chunk", "many_chunks"])
def test_matches_dense_sdpa_float32(spec, n, block, layer, budget):
    cp = patternc.compile(spec, n, block=block)
    q, k, v = qkv(cp.heads, n)
    out = block_sparse_attention(q, k, v, cp, layer, score_budget=budget)
    ref, valid = dense_reference(q, k, v, cp, layer)
    assert out.dtype == torch.float32 and out.shape == q.shape
    torch.testing.assert_close(out[:, valid], ref[:, valid], atol=1e-5, rtol=1e-5)
    assert not out.isnan().any()
    assert (out[:, ~valid] == 0).all()  # no allowed key: 0, not NaN


@pytest.mark.parametrize("spec, n, block, layer", [CASES[1], CASES[3], CASES[5]])
def test_matches_dense_sdpa_bfloat16(spec, n, block, layer):
    cp = patternc.compile(spec, n, block=block)
    q, k, v = qkv(cp.heads, n, dtype=torch.bfloat16)
    out = block_sparse_attention(q, k, v, cp, layer)
    ref, valid = dense_reference(q, k, v, cp, layer)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[:, valid].float(), ref[:, valid], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("spec, n, block, layer", [CASES[1], CASES[3], CASES[5], CASES[9]])
def test_matches_eager_flex_attention(spec, n, block, layer):
    cp = patternc.compile(spec, n, block=block)
    q, k, v = qkv(cp.heads, n, batch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is not fused
        ref = flex.flex_attention(q, k, v, block_mask=cp.to_block_mask(layer))
    out = block_sparse_attention(q, k, v, cp, layer)
    valid = torch.from_numpy(cp.to_dense(layer=layer).any(-1))
    torch.testing.assert_close(out[:, valid], ref[:, valid], atol=1e-5, rtol=1e-5)


def test_mask_matters():
    cp = patternc.compile("causal & window(16)", 128, block=32)
    q, k, v = qkv(1, 128)
    assert not torch.allclose(block_sparse_attention(q, k, v, cp), causal_sdpa(q, k, v), atol=1e-3)


def test_shape_mismatch_is_refused():
    cp = patternc.compile(per_head_stack(), 64, block=16)
    q, k, v = qkv(2, 64)
    with pytest.raises(ValueError, match=r"must be \(B, 4, 64, d\)"):
        block_sparse_attention(q, k, v, cp)
    q, k, v = qkv(4, 60)
    with pytest.raises(ValueError, match=r"must be \(B, 4, 64, d\)"):
        block_sparse_attention(q, k, v, cp)


def test_one_head_pattern_applies_to_every_head():
    cp = patternc.compile("causal & (window(20) | sink(3))", 100, block=(16, 32))
    q, k, v = qkv(3, 100)
    out = block_sparse_attention(q, k, v, cp)
    ref, _ = dense_reference(q, k, v, cp, 0)  # the (1, n, n) mask broadcasts over heads
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "dense_causal"])
def test_registry_backends_run(backend):
    cp = patternc.compile("causal", 96, block=32)
    q, k, v = qkv(1, 96)
    out = prepare(backend, cp)(q, k, v)
    np.testing.assert_allclose(out.numpy(), causal_sdpa(q, k, v).numpy(), atol=1e-5)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        prepare("nope", patternc.compile("causal", 64))


@pytest.mark.skipif(not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")),
                    reason="compiled FlexAttention on CPU needs a C++ compiler")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside torch.compile
def test_flex_backend_matches_reference():
    """The compiled kernel skips absent blocks and the mask_mod on FULL ones: it reads our lists."""
    cp = patternc.compile("causal & (window(40) | sink(5))", 192, block=(32, 16))
    q, k, v = qkv(1, 192, batch=1)
    out = prepare("flex", cp)(q, k, v)
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, cp), atol=1e-5, rtol=1e-5)
    assert compiled_flex() is compiled_flex()  # compiled once per process
