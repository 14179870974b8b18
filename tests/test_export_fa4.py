"""FlashAttention 4's block sparsity (``patternc.export.fa4``): counts and indices per query block,
read back through a converter written from FA4's documented semantics (full blocks attend every
pair, partial ones take the mask_mod, a row's first count entries count). FA4 needs a Hopper or
Blackwell GPU and is not run here."""

from __future__ import annotations

import numpy as np
import pytest
from stacks import per_head_stack
from test_flex_oracle import EXPRESSIONS, SHAPES

import patternc
from patternc.export.fa4 import fa4_to_dense

torch = pytest.importorskip("torch")


def read_back(cp, layer):
    fa = cp.to_fa4(layer)
    return fa4_to_dense(fa.mask_block_cnt, fa.mask_block_idx, fa.full_block_cnt, fa.full_block_idx,
                        fa.block_size, cp.n, cp.to_block_mask(layer).mask_mod)[0]


@pytest.mark.parametrize("n, block", SHAPES)
def test_oracle_table_round_trips_exactly(n, block):
    """Every expression of the table as one head of a stack: one mask_mod, one read-back."""
    exprs = [p.values[0] for p in EXPRESSIONS]
    overrides = tuple(patternc.Override(expr=e, heads=(h, h + 1)) for h, e in enumerate(exprs))
    stack = patternc.Stack(default=exprs[0], heads=len(exprs), overrides=overrides)
    cp = patternc.compile(stack, n, block=block)
    np.testing.assert_array_equal(read_back(cp, 0), cp.to_dense(layer=0))


def test_tables_are_the_block_masks_key_side():
    """torch's FLASH backend hands a BlockMask's key tables to FA4 as they are: ours agree."""
    cp = patternc.compile(per_head_stack(), 200, block=(32, 16))
    for layer in range(2):
        fa, bm = cp.to_fa4(layer), cp.to_block_mask(layer, width="compact")
        pairs = [("mask_block_cnt", "kv_num_blocks"), ("mask_block_idx", "kv_indices"),
                 ("full_block_cnt", "full_kv_num_blocks"), ("full_block_idx", "full_kv_indices")]
        for ours, theirs in pairs:
            got = getattr(fa, ours)
            assert got.dtype == np.int32 and got.shape[:2] == (1, cp.heads)
            np.testing.assert_array_equal(got, getattr(bm, theirs).numpy())
        assert fa.block_size == (32, 16)


def test_shared_heads_share_memory_and_rows_are_compact():
    cp = patternc.compile(patternc.Stack("causal & (window(300) | sink(8))", heads=16), 8192, block=128)
    fa = cp.to_fa4(0)
    assert fa.mask_block_idx.shape == (1, 16, 64, int(fa.mask_block_cnt.max()))  # as wide as the widest row
    assert fa.mask_block_idx.strides[1] == 0  # sixteen heads, one table
    assert not fa.mask_block_idx.flags.writeable


def test_converter_ignores_entries_past_the_count_and_refuses_bad_shapes():
    cnt = np.array([[[1, 0]]], np.int32)
    idx = np.array([[[[0, 1], [1, 1]]]], np.int32)  # past each count: garbage a kernel never reads
    out = fa4_to_dense(np.zeros_like(cnt), np.zeros_like(idx), cnt, idx, (2, 2), 4, lambda b, h, q, k: q >= k)
    want = np.zeros((4, 4), bool)
    want[:2, :2] = True  # block (0, 0) full; the rest unlisted
    np.testing.assert_array_equal(out[0, 0], want)
    with pytest.raises(patternc.PatternMeaningError, match="FA4 tables must be"):
        fa4_to_dense(cnt, idx, cnt, idx, (2, 2), 10, lambda b, h, q, k: q >= k)
