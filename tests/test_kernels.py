"""The reference block-sparse kernel against dense masked SDPA and eager FlexAttention, its plan
(runs of key blocks read in place), and the backend registry.

Rows with no allowed key are compared nowhere with SDPA (it gives NaN there); our kernel must give
exactly 0 on them. Every case runs both attention paths: SDPA's fused CPU kernel and the unfused
one used off CPU.
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
from patternc.kernels import (
    KernelInputError,
    block_sparse_attention,
    causal_sdpa,
    compiled_flex,
    prepare,
    reference,
)
from patternc.kernels.plan import MASK_SPAN, partial_kinds, segments

forward = reference._forward

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
    # the band-and-sink shapes the plan reads in place: sliding keys, a folded sink, cut-off key
    # columns, queries with no key in a window's edge block (window a multiple of the block)
    pytest.param("causal & (window(32) | sink(4))", 300, 16, 0, id="band_sink_dead_edge"),
    pytest.param("causal & (window(48) | sink(20))", 333, (16, 32), 0, id="band_rows_step2"),
    pytest.param("causal & (window(100) | global(3))", 250, (32, 8), 0, id="band_tall_blocks"),
    pytest.param("diagonals([-40, 0, 40]) | sink(8)", 210, 16, 0, id="bands_not_causal"),
    pytest.param("causal", 16 * (MASK_SPAN + 5) - 3, 16, 0, id="long_full_runs"),
    # fixed-place runs joined into one gathered call: summary columns, sinks, a global column
    pytest.param("causal & fixed(64, 3)", 333, 16, 0, id="fixed_gathered"),
    pytest.param("causal & fixed(16, 2)", 200, 16, 0, id="fixed_lone_run_gathered"),  # 2 of 16 columns read
    pytest.param("causal & (fixed(48, 5) | sink(7) | global(100))", 301, (16, 32), 0, id="fixed_sink_global"),
]


def qkv(heads, n, dtype=torch.float32, seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, D, generator=gen).to(dtype) for _ in range(3)]


def dense_reference(q, k, v, cp, layer):
    mask = torch.from_numpy(cp.to_dense(layer=layer))  # (H, n, n)
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    return out, mask.any(-1)  # (B, H, n, d), (H, n) rows with a key


@pytest.fixture(params=["fused", "math"])
def attend_path(request):
    """Run the kernel with SDPA's fused CPU kernel, or with the unfused path of other devices."""
    return request.param


@pytest.mark.parametrize("spec, n, block, layer", CASES)
@pytest.mark.parametrize("budget", [1 << 24, 3000], ids=["one_chunk", "many_chunks"])
def test_matches_dense_sdpa_float32(spec, n, block, layer, budget, attend_path):
    cp = patternc.compile(spec, n, block=block)
    q, k, v = qkv(cp.heads, n)
    out = block_sparse_attention(q, k, v, cp, layer, score_budget=budget, path=attend_path)
    ref, valid = dense_reference(q, k, v, cp, layer)
    assert out.dtype == torch.float32 and out.shape == q.shape
    torch.testing.assert_close(out[:, valid], ref[:, valid], atol=1e-5, rtol=1e-5)
    assert not out.isnan().any()
    assert (out[:, ~valid] == 0).all()  # no allowed key: 0, not NaN


@pytest.mark.parametrize("spec, n, block, layer", [CASES[1], CASES[3], CASES[5], CASES[10], CASES[11]])
@pytest.mark.parametrize("budget", [1 << 24, 3000], ids=["one_chunk", "many_chunks"])
@pytest.mark.parametrize("path", ["fused", "fused_fp32", "math", "bf16"])
def test_matches_dense_sdpa_bfloat16(spec, n, block, layer, budget, path):
    """bfloat16 stays bfloat16 on CPU (SDPA's kernel accumulates in float32); merges round it."""
    cp = patternc.compile(spec, n, block=block)
    q, k, v = qkv(cp.heads, n, dtype=torch.bfloat16)
    out = block_sparse_attention(q, k, v, cp, layer, score_budget=budget, path=path)
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


@pytest.mark.parametrize("spec, n, block, layer", CASES)
@pytest.mark.parametrize("max_blocks", [1, 3, 64])
def test_plan_covers_every_stored_block_once(spec, n, block, layer, max_blocks):
    cp = patternc.compile(spec, n, block=block)
    grid = cp.grid
    for head in range(cp.heads):
        indptr, indices, full = cp.layout(layer, head)
        _, masks = partial_kinds(cp, layer, head)
        seen = np.zeros((grid.nbq, grid.nbk), int)
        is_full = np.zeros((grid.nbq, grid.nbk), bool)
        stored = np.zeros(grid.nbq, bool)
        plan = segments(cp, layer, head, max_blocks)
        for seg in plan.segments:
            assert seg.k_len > 0 and (seg.kinds is None or len(seg.kinds) <= max_blocks)
            for r in range(seg.rows):
                row = seg.row0 + r * seg.row_step
                start = seg.k_start + r * seg.k_step
                assert start % grid.bk == 0 and start + seg.k_len <= n
                assert seg.q_len == min(grid.bq, n - row * grid.bq)
                cols = np.arange(start // grid.bk, -(-(start + seg.k_len) // grid.bk))
                if seg.gather is not None:  # fixed-place runs joined: their ranges, in order, apart
                    assert seg.k_step == 0 and sum(b - a for a, b in seg.gather) == seg.k_len
                    assert all(a % grid.bk == 0 and a < b <= c for (a, b), (c, _) in
                               zip(seg.gather, (*seg.gather[1:], (n + 1, None)), strict=True))
                    cols = np.concatenate([np.arange(a // grid.bk, -(-b // grid.bk)) for a, b in seg.gather])
                    assert seg.kinds is None or len(seg.kinds) == len(cols)
                seen[row, cols] += 1
                is_full[row, cols] = seg.kinds is None or np.array(seg.kinds) < 0
                stored[row] |= seg.fresh
        rows = np.repeat(np.arange(grid.nbq), np.diff(indptr))
        expected = np.zeros((grid.nbq, grid.nbk), int)
        expected[rows, indices] = 1
        np.testing.assert_array_equal(seen, expected)
        np.testing.assert_array_equal(is_full[rows, indices], full)
        unstored = np.zeros(n, bool)
        for start, end in plan.unstored:
            unstored[start:end] = True
        np.testing.assert_array_equal(unstored, np.repeat(~stored, grid.bq)[:n])
        assert len(masks) == len(np.unique(masks.reshape(len(masks), -1), axis=0))  # one id per content


def test_band_and_sink_read_keys_in_place():
    """The benchmark's pattern: one sliding call for the band, one shared-key call for the sink,
    a handful of calls for the first rows; the band stores, the sink merges."""
    cp = patternc.compile("causal & (window(512) | sink(64))", 8192, block=128)
    plan = segments(cp, 0, 0, 64)
    band, sink = plan.segments[:2]
    assert (band.rows, band.row_step, band.k_step, band.k_len) == (58, 1, 128, 5 * 128)  # rows 6..63
    assert (sink.rows, sink.row_step, sink.k_step, sink.k_start) == (58, 1, 0, 0)
    assert band.fresh and not sink.fresh
    assert len(plan.segments) == 2 + 6  # and one call for each of rows 0..5
    _, masks = partial_kinds(cp, 0, 0)
    assert len(masks) <= 6  # edge, diagonal, sink and the first rows' blocks; not one per row


def test_mask_matters():
    cp = patternc.compile("causal & window(16)", 128, block=32)
    q, k, v = qkv(1, 128)
    assert not torch.allclose(block_sparse_attention(q, k, v, cp), causal_sdpa(q, k, v), atol=1e-3)


def test_shape_mismatch_is_refused():
    cp = patternc.compile(per_head_stack(), 64, block=16)
    q, k, v = qkv(2, 64)
    with pytest.raises(KernelInputError, match="q has 2 heads but the pattern has 4"):
        block_sparse_attention(q, k, v, cp)
    q, k, v = qkv(4, 60)
    with pytest.raises(KernelInputError, match="q has length 60 but the pattern was compiled for n = 64"):
        block_sparse_attention(q, k, v, cp)


def test_one_head_pattern_applies_to_every_head():
    cp = patternc.compile("causal & (window(20) | sink(3))", 100, block=(16, 32))
    q, k, v = qkv(3, 100)
    out = block_sparse_attention(q, k, v, cp)
    ref, _ = dense_reference(q, k, v, cp, 0)  # the (1, n, n) mask broadcasts over heads
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["causal", "causal & window(n)", "causal | (causal & window(8))"])
def test_a_dense_causal_layer_runs_sdpas_causal_kernel_without_gradients(spec, monkeypatch):
    """Any expression that lowers to causal's band is dense attention: without gradients it runs
    SDPA's fused causal kernel (bit for bit its output, grouped-query heads and a scale too) and
    never the block walk; with gradients, the block walk."""
    walks = []
    monkeypatch.setattr(reference, "_forward", lambda *a: walks.append(1) or forward(*a))
    cp = patternc.compile(spec, n=200, block=32)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 200, D, generator=gen)
    k, v = (torch.randn(2, 2, 200, D, generator=gen) for _ in range(2))
    out = block_sparse_attention(q, k, v, cp, scale=0.3)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3,
                                                             enable_gqa=True)
    assert torch.equal(out, dense) and not walks
    q.requires_grad_()
    torch.testing.assert_close(block_sparse_attention(q, k, v, cp, scale=0.3), dense, atol=1e-5, rtol=1e-5)
    assert walks


def test_a_dense_causal_layer_with_a_bad_key_takes_the_block_path():
    """A NaN in a future key leaves earlier rows as they were (SDPA's causal kernel would multiply
    it by a zero weight into every row of its tile)."""
    cp = patternc.compile("causal", n=256, block=64)
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 256, D, generator=gen) for _ in range(3))
    clean = block_sparse_attention(q, k, v, cp)
    v[:, :, 100] = float("nan")
    dirty = block_sparse_attention(q, k, v, cp)
    torch.testing.assert_close(dirty[:, :, :100], clean[:, :, :100], atol=1e-5, rtol=1e-5)
    assert dirty[:, :, 100:].isnan().all()


@pytest.mark.parametrize("spec", ["causal & window(199)", "causal | window(3)", "causal & ~diagonals([0])"])
def test_a_layer_that_is_not_dense_causal_keeps_the_block_walk(spec, monkeypatch):
    walks = []
    monkeypatch.setattr(reference, "_forward", lambda *a: walks.append(1) or forward(*a))
    cp = patternc.compile(spec, n=200, block=32)
    q, k, v = torch.randn(3, 1, 1, 200, D, generator=torch.Generator().manual_seed(5))
    out = block_sparse_attention(q, k, v, cp)
    mask = torch.from_numpy(cp.to_dense(layer=0))
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               atol=1e-5, rtol=1e-5)
    assert walks


@pytest.mark.parametrize("backend", ["kernel", "sdpa", "auto", "dense_causal"])
def test_registry_backends_run(backend):
    cp = patternc.compile("causal", 96, block=32)
    q, k, v = qkv(1, 96)
    out = prepare(backend, cp)(q, k, v)
    np.testing.assert_allclose(out.numpy(), causal_sdpa(q, k, v).numpy(), atol=1e-5)


def test_unknown_backend():
    with pytest.raises(KernelInputError, match="backend must be one of auto, kernel, flex, sdpa, got 'nope'"):
        prepare("nope", patternc.compile("causal", 64))


def test_one_backend_vocabulary_everywhere():
    """nn, hf, measure and the search take the names of patternc.kernels.BACKENDS, and nothing else."""
    import patternc.nn
    from search import validate

    assert patternc.nn.BACKENDS == patternc.kernels.BACKENDS == ("auto", "kernel", "flex", "sdpa")
    hf = pytest.importorskip("patternc.hf")
    assert hf.BACKENDS is patternc.kernels.BACKENDS
    for name in patternc.kernels.BACKENDS:
        assert validate.backend_choice(name, "kernel.backend") == name


def test_the_old_name_of_the_kernel_still_works_with_a_deprecation():
    import patternc.nn

    cp = patternc.compile("causal & window(24)", 96, block=32)
    q, k, v = qkv(1, 96)
    with pytest.warns(DeprecationWarning, match="'reference' is now called 'kernel'"):
        out = prepare("reference", cp)(q, k, v)
    torch.testing.assert_close(out, block_sparse_attention(q, k, v, cp))
    with pytest.warns(DeprecationWarning, match="'reference' is now called 'kernel'"):
        patternc.nn.sparse_attention(q, k, v, cp, backend="reference")


@pytest.mark.parametrize("backend", ["auto", "kernel", "sdpa"])
@pytest.mark.parametrize("which", ["last", "positions"])
def test_attend_computes_any_rows_exactly_on_every_backend(backend, which):
    """The front door: the last rows of a pattern (a decode step, a chunk), or rows at any
    positions, equal those rows of the whole sequence; a row that reads no key gives 0."""
    from patternc.kernels import attend

    cp = patternc.compile("causal & (sink(3) | window(20)) & ~diagonals([0])", 128, block=32)  # row 0: no key
    q, k, v = qkv(2, 128)
    whole = attend(q, k, v, cp, backend=backend)
    torch.testing.assert_close(whole, attend(q, k, v, cp, backend="sdpa"), atol=1e-5, rtol=1e-5)
    assert whole[:, :, 0].abs().max() == 0
    if which == "last":
        got, want = attend(q[:, :, -7:], k, v, cp, backend=backend), whole[:, :, -7:]
    else:
        rows = torch.tensor([0, 5, 64, 127])
        got, want = attend(q[:, :, rows], k, v, cp, rows=rows, backend=backend), whole[:, :, rows]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


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


def test_what_a_pattern_derives_dies_with_it():
    """Plans, masks and row masks are kept with the compiled pattern, not in module-level caches
    keyed by its identity: once nothing holds the pattern, nothing is left of it."""
    import gc
    import weakref

    from patternc.kernels import attend

    cp = patternc.compile("causal & (sink(2) | window(40))", 192, block=32)
    q, k, v = qkv(2, 192)
    attend(q, k, v, cp, backend="kernel")
    attend(q[:, :, -3:], k, v, cp, backend="sdpa")
    assert len(cp.__dict__["_derived"]) >= 3  # the kernel's plan and masks, the rows' masks
    alive = weakref.ref(cp)
    del cp
    patternc.compiled.clear_cache()  # the compile cache, which holds patterns on purpose
    gc.collect()
    assert alive() is None
