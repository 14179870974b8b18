"""FlexAttention's ``create_block_mask`` as a second, independent oracle for the block sets.

``create_block_mask`` evaluates our ``mask_mod`` on every pair and derives the FULL and PARTIAL
blocks itself; they must be exactly ours. One known difference is allowed: it pads a short last
query row (and key column) up to a whole block, so a block of ours that is FULL there may be
PARTIAL in theirs, never the other way round and never a different set of stored blocks.
"""

from __future__ import annotations

import numpy as np
import pytest

import patternc

flex = pytest.importorskip("torch.nn.attention.flex_attention")

EXPRESSIONS = [
    pytest.param("all", id="all"),
    pytest.param("none", id="none"),
    pytest.param("causal", id="causal"),
    pytest.param("window(7)", id="window"),
    pytest.param("band(-3, 20)", id="band"),
    pytest.param("dilated(8, 3)", id="dilated"),
    pytest.param("stride(16)", id="stride16"),
    pytest.param("stride(7)", id="stride7"),
    pytest.param("fixed(32, 4)", id="fixed_aligned"),
    pytest.param("fixed(20, 3)", id="fixed_ragged"),
    pytest.param("chunk(48)", id="chunk"),
    pytest.param("sink(5)", id="sink"),
    pytest.param("global(20)", id="global"),
    pytest.param("tokens([0, 17, 100])", id="tokens"),
    pytest.param("columns([3, 64, 127])", id="columns"),
    pytest.param("diagonals([0, 5, -40])", id="diagonals"),
    pytest.param("prefix(40)", id="prefix"),
    pytest.param("random(2, seed=3)", id="random"),
    pytest.param("causal & window(33)", id="causal_window"),
    pytest.param("causal & (window(16) | global(8))", id="longformer"),
    pytest.param("causal - chunk(32)", id="difference"),
    pytest.param("~causal", id="complement"),
    pytest.param("causal & (sink(4) | window(50)) | random(1, seed=9)", id="streaming_random"),
    pytest.param("causal & fixed(32, 4) - diagonals([0])", id="fixed_minus_diag"),
    pytest.param("(stride(5) & window(40)) | prefix(10)", id="stride_window_prefix"),
    pytest.param("causal | prefix(n // 3)", id="prefix_lm"),
]

SHAPES = [
    pytest.param(128, (16, 16), id="n128-16x16"),
    pytest.param(128, (32, 16), id="n128-32x16"),
    pytest.param(200, (32, 16), id="n200-32x16"),
    pytest.param(509, (16, 64), id="n509-16x64"),
]


def _blocks(num, idx):
    """{(row, col)} from FlexAttention's (nbq,) counts and (nbq, nbk) index table."""
    num, idx = num[0, 0].numpy(), idx[0, 0].numpy()
    return {(i, int(j)) for i in range(len(num)) for j in idx[i, : num[i]]}


def _ours(cp):
    indptr, indices, full = cp.layout()
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    stored = {(int(i), int(j)) for i, j in zip(rows, indices, strict=True)}
    return stored, {(int(i), int(j)) for i, j, f in zip(rows, indices, full, strict=True) if f}


@pytest.mark.parametrize("n, block", SHAPES)
@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_block_sets_match_create_block_mask(expr, n, block):
    bq, bk = block
    cp = patternc.compile(expr, n, block=block)
    bm = flex.create_block_mask(cp.mask_mod(), None, None, n, n, device="cpu", BLOCK_SIZE=block)
    their_partial = _blocks(bm.kv_num_blocks, bm.kv_indices)
    their_full = _blocks(bm.full_kv_num_blocks, bm.full_kv_indices)
    stored, full = _ours(cp)

    assert their_partial | their_full == stored
    assert their_full <= full, f"flex finds FULL blocks we call PARTIAL: {their_full - full}"
    # the only FULL blocks of ours that flex may call partial are those its padding truncates
    short_row = (n - 1) // bq if n % bq else None
    short_col = (n - 1) // bk if n % bk else None
    unexplained = {(i, j) for i, j in full - their_full if i != short_row and j != short_col}
    assert not unexplained, f"FULL blocks FlexAttention finds partial: {sorted(unexplained)[:5]}"


def test_padding_allowance_is_needed_and_bounded():
    """The allowance above is not vacuous: on a ragged grid flex does demote our FULL blocks in
    the short last row and column, and only there."""
    n, block = 200, (32, 16)
    cp = patternc.compile("all", n, block=block)
    bm = flex.create_block_mask(cp.mask_mod(), None, None, n, n, device="cpu", BLOCK_SIZE=block)
    stored, full = _ours(cp)
    assert full == stored  # every block of `all` is FULL, truncated ones included
    demoted = full - _blocks(bm.full_kv_num_blocks, bm.full_kv_indices)
    short_row, short_col = (n - 1) // 32, (n - 1) // 16
    assert {i for i, _ in demoted} == set(range(short_row + 1))  # every row, via the short column
    not_short_col = {(i, j) for i, j in demoted if j != short_col}
    assert not_short_col == {(short_row, j) for j in range(short_col)}
