"""``CompiledPattern.to_block_mask``: FlexAttention's ``BlockMask`` built from our block CSR.

Three independent checks, because eager ``flex_attention`` on CPU evaluates the ``mask_mod`` on
every pair and never reads the block lists:

- eager ``flex_attention`` against SDPA with our dense mask (the ``mask_mod`` is right per head);
- the block lists read back as a kernel reads them (FULL: no ``mask_mod``; PARTIAL: ``mask_mod``;
  absent: masked) give exactly the dense mask, and ``BlockMask.to_dense`` is our block set;
- compiled ``flex_attention``, which does skip absent blocks and the ``mask_mod`` on FULL ones,
  against SDPA.

Rows with no allowed key are compared nowhere: SDPA gives NaN there and FlexAttention gives 0.
"""

from __future__ import annotations

import pathlib
import shutil
import warnings

import numpy as np
import pytest
from stacks import per_head_stack

import patternc

torch = pytest.importorskip("torch")
flex = pytest.importorskip("torch.nn.attention.flex_attention")

ROOT = pathlib.Path(__file__).resolve().parents[1]
D = 16  # head dimension


CASES = [
    pytest.param("causal & (window(37) | global(5))", 200, (32, 16), 0, id="window_global_rect"),
    pytest.param(per_head_stack(), 200, (32, 16), 0, id="per_head_layer0"),
    pytest.param(per_head_stack(), 200, (32, 16), 1, id="per_head_layer1"),
    pytest.param("random(2, seed=5) | diagonals([0])", 300, 64, 0, id="random_ragged"),
    pytest.param(patternc.Stack(default="causal & random(1 + h, seed=3)", heads=3), 130, (16, 8), 0,
                 id="random_per_head"),
    pytest.param("~causal", 100, (16, 32), 0, id="complement_empty_last_row"),
    pytest.param("diagonals([5]) | tokens([70])", 90, 16, 0, id="empty_first_rows"),
    pytest.param(str(ROOT / "conf/pattern/longformer.yaml"), 256, None, 6, id="longformer_layer6"),
    pytest.param(str(ROOT / "conf/pattern/minference_vertical_slash.yaml"), 300, None, 0,
                 id="vertical_slash_tables"),
]


# eager flex re-traces every new mask_mod (about a second each), so it runs on a subset that
# still has per-head dispatch, random tables, a ragged n, rectangular blocks and an empty row
EAGER = [case for case in CASES if case.id in {"per_head_layer1", "random_ragged", "longformer_layer6",
                                               "complement_empty_last_row"}]


def qkv(heads, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, n, D, generator=gen, dtype=torch.float32) for _ in range(3)]


def sdpa(q, k, v, dense):
    mask = torch.from_numpy(dense)[None]  # (H, n, n) -> (1, H, n, n)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def assert_close_on_valid_rows(out, ref, dense):
    valid = torch.from_numpy(dense.any(axis=-1))[None]  # (1, H, n): rows with an allowed key
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)


def kinds_from_lists(num, idx, nbk):
    """(H, nbq, nbk) bool from FlexAttention's (1, H, nbq) counts and (1, H, nbq, w) indices."""
    num, idx = num[0].numpy(), idx[0].numpy()
    out = np.zeros((*num.shape, nbk), bool)
    for h, i in np.ndindex(num.shape):
        cols = idx[h, i, : num[h, i]]
        assert len(set(cols.tolist())) == len(cols), f"head {h} row {i} lists a block twice"
        out[h, i, cols] = True
    return out


@pytest.mark.parametrize("spec, n, block, layer", EAGER)
def test_eager_flex_attention_matches_sdpa(spec, n, block, layer):
    cp = patternc.compile(spec, n, block=block)
    dense = cp.to_dense(layer=layer)  # (H, n, n)
    q, k, v = qkv(cp.heads, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is not fused
        out = flex.flex_attention(q, k, v, block_mask=cp.to_block_mask(layer))
    ref = sdpa(q, k, v, dense)
    assert_close_on_valid_rows(out, ref, dense)
    # the mask matters: unmasked attention is far from it
    assert not torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-3)


@pytest.mark.parametrize("spec, n, block, layer", CASES)
def test_block_lists_are_our_layout(spec, n, block, layer):
    cp = patternc.compile(spec, n, block=block)
    bm = cp.to_block_mask(layer)
    grid, heads = cp.grid, cp.heads
    assert bm.shape == (1, heads, n, n)
    assert tuple(bm.BLOCK_SIZE) == cp.block and tuple(bm.seq_lengths) == (n, n)
    for name in ("kv_indices", "full_kv_indices"):
        tensor = getattr(bm, name)
        assert tensor.dtype == torch.int32 and tuple(tensor.shape) == (1, heads, grid.nbq, grid.nbk)
    partial = kinds_from_lists(bm.kv_num_blocks, bm.kv_indices, grid.nbk)
    full = kinds_from_lists(bm.full_kv_num_blocks, bm.full_kv_indices, grid.nbk)
    for h in range(heads):
        indptr, indices, is_full = cp.layout(layer, h)
        rows = np.repeat(np.arange(grid.nbq), np.diff(indptr))
        want_full = np.zeros((grid.nbq, grid.nbk), bool)
        want_partial = np.zeros((grid.nbq, grid.nbk), bool)
        want_full[rows[is_full], indices[is_full]] = True
        want_partial[rows[~is_full], indices[~is_full]] = True
        np.testing.assert_array_equal(full[h], want_full, err_msg=f"FULL blocks of head {h}")
        np.testing.assert_array_equal(partial[h], want_partial, err_msg=f"PARTIAL blocks of head {h}")
    stored = bm.to_dense()[0].numpy().astype(bool)  # FlexAttention's own reading of the lists
    np.testing.assert_array_equal(stored, partial | full)
    # the query-side lists (the backward's) are the transpose, as torch itself would derive them
    for num, idx, want in ((bm.q_num_blocks, bm.q_indices, partial),
                           (bm.full_q_num_blocks, bm.full_q_indices, full)):
        assert tuple(idx.shape) == (1, heads, grid.nbk, grid.nbq) and idx.dtype == torch.int32
        np.testing.assert_array_equal(kinds_from_lists(num, idx, grid.nbq), want.transpose(0, 2, 1))
    theirs = flex.BlockMask.from_kv_blocks(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks,
                                           bm.full_kv_indices, BLOCK_SIZE=cp.block, seq_lengths=(n, n))
    for name in ("q_num_blocks", "full_q_num_blocks"):
        torch.testing.assert_close(getattr(bm, name), getattr(theirs, name))


@pytest.mark.parametrize("spec, n, block, layer", CASES)
def test_lists_read_as_a_kernel_reads_them_give_the_dense_mask(spec, n, block, layer):
    cp = patternc.compile(spec, n, block=block)
    bm = cp.to_block_mask(layer)
    grid = cp.grid
    partial = kinds_from_lists(bm.kv_num_blocks, bm.kv_indices, grid.nbk)
    full = kinds_from_lists(bm.full_kv_num_blocks, bm.full_kv_indices, grid.nbk)

    def per_token(blocks):  # (H, nbq, nbk) -> (H, n, n)
        return np.repeat(np.repeat(blocks, grid.bq, axis=1), grid.bk, axis=2)[:, :n, :n]

    heads = torch.arange(cp.heads)[:, None, None]  # every head in one call: (H, 1, 1)
    q_idx, kv_idx = torch.arange(n)[None, :, None], torch.arange(n)[None, None, :]
    mask_mod = bm.mask_mod(torch.tensor(0), heads, q_idx, kv_idx).numpy()  # (H, n, n)
    dense = cp.to_dense(layer=layer)
    np.testing.assert_array_equal(mask_mod, dense)  # the mask_mod alone is exact on every pair
    kernel = per_token(full) | (per_token(partial) & mask_mod)
    np.testing.assert_array_equal(kernel, dense)


def test_mask_mod_names():
    cp = patternc.compile(str(ROOT / "conf/pattern/longformer.yaml"), 256)
    assert cp.to_block_mask(6).mask_mod.__name__ == (
        "h0to1_causal_and_dilated_256_2_or_global_16__h2to11_causal_and_window_256_or_global_16")
    assert cp.to_block_mask(0).mask_mod.__name__ == cp.mask_mod(0, 0).__name__
    names = {patternc.compile(per_head_stack(), 64, block=8).to_block_mask(l).mask_mod.__name__
             for l in range(2)}
    assert names == {"causal_and_window_8_h_1",
                     "h0to1_causal_and_window_8_h_1__h2to3_causal_and_stride_7_or_sink_3"}


def test_layer_outside_the_stack_is_refused():
    cp = patternc.compile(per_head_stack(), 64, block=8)
    with pytest.raises(patternc.PatternSizeError, match="outside this stack"):
        cp.to_block_mask(2)


def _has_cxx() -> bool:
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _has_cxx(), reason="compiled FlexAttention on CPU needs a C++ compiler")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside torch.compile
def test_compiled_flex_attention_matches_sdpa():
    """The compiled kernel reads our lists: absent blocks are skipped and FULL ones get no
    mask_mod, so a wrong list shows here (eager flex never reads them). Layer 1 has three head
    groups, so the head dispatch is compiled too. One compile costs about 10 s on a cold cache.
    (torch 2.13's compiled CPU kernel is itself wrong for key blocks of 8, so the blocks here are
    32 x 16.)"""
    n = 200
    cp = patternc.compile(per_head_stack(), n, block=(32, 16))
    q, k, v = qkv(cp.heads, n, seed=1)
    dense = cp.to_dense(layer=1)
    assert dense.any(axis=-1).all()
    out = torch.compile(flex.flex_attention)(q, k, v, block_mask=cp.to_block_mask(1))
    assert_close_on_valid_rows(out, sdpa(q, k, v, dense), dense)


def test_mask_mod_with_lookup_tables_runs_inside_flex_attention():
    """FlexAttention traces its mask_mod with TorchDynamo, which cannot follow the numpy code
    that builds the tables of tokens, columns, diagonals and random; the per-head mask_mod failed
    there with "attempted to trace numpy function" before it was recorded as torch ops."""
    n = 96
    cp = patternc.compile("causal & (tokens([3, 40]) | columns([7]) | diagonals([5]) | "
                          "random(1, seed=2))", n, block=16)
    dense = cp.to_dense(0, 0)
    bm = flex.create_block_mask(cp.mask_mod(), 1, 1, n, n, device="cpu", BLOCK_SIZE=16)
    q, k, v = qkv(1, n, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex.flex_attention(q, k, v, block_mask=bm)
    assert_close_on_valid_rows(out, sdpa(q, k, v, dense[None]), dense[None])
