"""Block-level exports: ``to_bsr`` (FlashInfer's block CSR with per-block masks) and
``to_dense_blocks`` (DeepSpeed / Triton's 0/1 layout), each read back against the dense mask."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import patternc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def two_layer_stack():
    return patternc.Stack(default="causal & window(5 + 3 * h + l)", layers=2, heads=3,
                          overrides=(patternc.Override(expr="random(2, seed=1) | tokens([9])",
                                                       layers=(1, 2), heads=(2, 3)),))


CASES = [
    pytest.param("causal & (window(37) | global(5))", 200, (32, 16), id="window_global_rect"),
    pytest.param("random(2, seed=5) - diagonals([0])", 130, 16, id="random_ragged"),
    pytest.param("stride(7) | columns([3, 99])", 100, (8, 32), id="stride_columns"),
    pytest.param("all", 50, (16, 8), id="all_ragged"),
    pytest.param("none", 50, 16, id="none"),
    pytest.param(two_layer_stack(), 70, (8, 16), id="stack"),
]


def pairs(cp):
    return [(l, h) for l in range(cp.layers) for h in range(cp.heads)]


def dense_from_bsr(b):
    """Token mask (n, n) from indptr, indices and per-block masks alone."""
    bq, bk = b.block
    out = np.zeros((b.nbq * bq, b.nbk * bk), bool)  # padded to whole blocks
    for i in range(b.nbq):
        for p in range(b.indptr[i], b.indptr[i + 1]):
            j = b.indices[p]
            out[i * bq: (i + 1) * bq, j * bk: (j + 1) * bk] = b.masks[p]
    assert not out[b.n:].any() and not out[:, b.n:].any(), "a mask allows a position past n"
    return out[: b.n, : b.n]


@pytest.mark.parametrize("spec, n, block", CASES)
def test_bsr_with_masks_rebuilds_the_dense_mask(spec, n, block):
    cp = patternc.compile(spec, n, block=block)
    for l, h in pairs(cp):
        b = cp.to_bsr(l, h, with_masks=True)
        np.testing.assert_array_equal(dense_from_bsr(b), cp.to_dense(l, h), err_msg=f"layer {l} head {h}")


@pytest.mark.parametrize("spec, n, block", CASES)
def test_bsr_arrays_shapes_and_kinds(spec, n, block):
    cp = patternc.compile(spec, n, block=block)
    bq, bk = cp.block
    for l, h in pairs(cp):
        b = cp.to_bsr(l, h, with_masks=True)
        indptr, indices, full = cp.layout(l, h)
        assert (b.block, b.n, b.nbq, b.nbk, b.nnz) == (cp.block, n, cp.grid.nbq, cp.grid.nbk, len(indices))
        assert (b.indptr.dtype, b.indices.dtype, b.full.dtype, b.masks.dtype) == (
            np.int32, np.int32, np.bool_, np.bool_)
        assert b.indptr.shape == (cp.grid.nbq + 1,) and b.masks.shape == (b.nnz, bq, bk)
        np.testing.assert_array_equal(b.indptr, indptr)
        np.testing.assert_array_equal(b.indices, indices)
        np.testing.assert_array_equal(b.full, full)
        # a FULL block is all True inside the sequence; a PARTIAL one is neither all nor nothing
        rows = np.repeat(np.arange(b.nbq), np.diff(b.indptr))
        inside_q = np.minimum((rows + 1) * bq, n) - rows * bq  # rows of each block inside n
        inside_k = np.minimum((b.indices + 1) * bk, n) - b.indices * bk
        for p in range(b.nnz):
            cell = b.masks[p, : inside_q[p], : inside_k[p]]
            if b.full[p]:
                assert cell.all(), f"FULL block {p} has a False inside the sequence"
            else:
                assert cell.any() and not cell.all(), f"PARTIAL block {p} is empty or full"
        for array in (b.indptr, b.indices, b.full, b.masks):
            with pytest.raises(ValueError):
                array[...] = 0


def test_bsr_without_masks():
    b = patternc.compile("causal & window(40)", 300, block=64).to_bsr()
    assert b.masks is None
    assert b.indptr.tolist() == [0, 1, 3, 5, 7, 9]
    assert b.indices.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert b.full.tolist() == [False] * 9  # a 40-key window never fills a 64 x 64 block


def test_bsr_masks_are_refused_above_the_limit():
    cp = patternc.compile("all", 2**15)  # 65,536 blocks of 128 x 128: 2**30 booleans
    assert cp.to_bsr().nnz == 2**16  # the CSR alone is fine
    with pytest.raises(patternc.PatternSizeError, match="exceed the limit"):
        cp.to_bsr(with_masks=True)
    from patternc.export.bsr import to_bsr

    small = patternc.compile("causal", 64, block=16)  # 10 blocks of 256
    with pytest.raises(patternc.PatternSizeError, match="max_elements"):
        to_bsr(small, with_masks=True, max_elements=10 * 256 - 1)
    assert to_bsr(small, with_masks=True, max_elements=10 * 256).masks.shape == (10, 16, 16)


def test_bsr_refuses_a_head_outside_the_stack():
    cp = patternc.compile(two_layer_stack(), 32, block=8)
    with pytest.raises(patternc.PatternSizeError, match="outside this stack"):
        cp.to_bsr(0, 3)


# ---- the (L, H, nbq, nbk) layout -----------------------------------------------------------------


@pytest.mark.parametrize("spec, n, block", [*CASES, pytest.param(str(ROOT / "conf/pattern/bigbird.yaml"),
                                                                  512, None, id="bigbird")])
def test_block_layout_is_the_stored_blocks(spec, n, block):
    cp = patternc.compile(spec, n, block=block)
    layout = cp.to_dense_blocks()
    assert layout.dtype == np.int64 and layout.shape == (cp.layers, cp.heads, cp.grid.nbq, cp.grid.nbk)
    assert set(np.unique(layout).tolist()) <= {0, 1}
    for l, h in pairs(cp):
        indptr, indices, _ = cp.layout(l, h)
        want = np.zeros((cp.grid.nbq, cp.grid.nbk), np.int64)
        want[np.repeat(np.arange(cp.grid.nbq), np.diff(indptr)), indices] = 1
        np.testing.assert_array_equal(layout[l, h], want, err_msg=f"layer {l} head {h}")


def test_block_layout_is_refused_above_the_limit():
    from patternc.limits import LAYOUT_LIMIT

    # 2 x 2 heads of 4096 x 4096 blocks: 2**26 elements, refused before anything is allocated
    big = patternc.compile(patternc.Stack(default="causal & window(16)", layers=2, heads=2), 2**16, block=16)
    assert LAYOUT_LIMIT < 2 * 2 * 4096 * 4096
    with pytest.raises(patternc.PatternSizeError, match="exceeds the limit"):
        big.to_dense_blocks()
    small = patternc.compile("causal", 64, block=16)
    with pytest.raises(patternc.PatternSizeError, match="max_elements"):
        small.to_dense_blocks(max_elements=15)
    assert small.to_dense_blocks(max_elements=16).sum() == 10
