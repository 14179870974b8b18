"""FlashInfer's variable block-sparse inputs (``patternc.export.flashinfer``): exact partitions into
whole cells, per KV head, read back through a converter written from FlashInfer's documented
semantics (its ``plan`` docstring and its prefill kernels' causal rule). FlashInfer is not
installed here; ``benchmarks/gpu_check.py`` runs the real wrapper where it is."""

from __future__ import annotations

import numpy as np
import pytest
from test_flex_oracle import EXPRESSIONS, SHAPES

import patternc
from patternc.export.flashinfer import flashinfer_variable_to_dense

ACCEPTED = [
    pytest.param("causal", True, id="causal"),
    pytest.param("causal & chunk(48)", True, id="causal_chunks_not_on_block_edges"),
    pytest.param("causal & (chunk(32) | sink(4))", True, id="chunks_sink"),
    pytest.param("causal & (chunk(16) | global(3))", True, id="chunks_global"),
    pytest.param("causal & random(2, seed=1) | causal & chunk(16)", True, id="bigbird_blocks_causal"),
    pytest.param("chunk(48)", False, id="documents"),
    pytest.param("sink(5)", False, id="sink"),
    pytest.param("global(20)", False, id="global"),
    pytest.param("prefix(40)", False, id="prefix"),
    pytest.param("tokens([0, 17, 100])", False, id="token_rows"),
    pytest.param("columns([3, 64, 127])", False, id="columns"),
    pytest.param("random(2, seed=3)", False, id="random_blocks"),
    pytest.param("fixed(32, 4)", False, id="sparse_transformer_fixed"),
]

REFUSED = [
    pytest.param("causal & window(33)", "changes at most of its rows", id="window_edge"),
    pytest.param("causal & stride(7)", "changes at most of its", id="stride"),
    pytest.param("causal | prefix(40)", "changes at most of its rows", id="prefix_lm_diagonal"),
    pytest.param("causal - columns([5])", "attend keys but not their own diagonal cell",
                 id="row_without_diagonal"),
]


def dense(fi):
    return flashinfer_variable_to_dense(fi.block_mask_map, fi.block_row_sz, fi.block_col_sz, fi.causal)


@pytest.mark.parametrize("n, block", SHAPES)
@pytest.mark.parametrize("expr", [p.values[0] for p in EXPRESSIONS])
def test_oracle_table_round_trips_exactly_or_is_refused(expr, n, block):
    cp = patternc.compile(expr, n, block=block)
    try:
        fi = cp.to_flashinfer_variable()
    except patternc.PatternMeaningError as err:
        assert "takes whole cells only" in str(err) and "BlockSparseAttentionWrapper" in str(err)
        return
    assert fi.block_mask_map.dtype == bool and fi.block_row_sz.dtype == fi.block_col_sz.dtype == np.int32
    assert fi.block_row_sz.sum() == fi.block_col_sz.sum() == n
    np.testing.assert_array_equal(dense(fi)[0], cp.to_dense(0, 0))


@pytest.mark.parametrize("n, block", [(200, (16, 16)), (509, (32, 32)), (256, (64, 64))])
@pytest.mark.parametrize("expr, causal", ACCEPTED)
def test_patterns_of_whole_cells_are_accepted(expr, causal, n, block):
    cp = patternc.compile(expr, n, block=block)
    fi = cp.to_flashinfer_variable()
    assert fi.causal is causal and fi.exact
    np.testing.assert_array_equal(dense(fi)[0], cp.to_dense(0, 0))


@pytest.mark.parametrize("expr, reason", REFUSED)
def test_refusals_name_the_head_and_a_block_and_suggest_masks(expr, reason):
    cp = patternc.compile(expr, 200, block=16)
    with pytest.raises(patternc.PatternMeaningError) as info:
        cp.to_flashinfer_variable()
    message = str(info.value)
    assert message.startswith("layer 0, KV head 0 (query head 0): FlashInfer's variable block-sparse wrapper")
    assert reason in message and "with_masks=True" in message


def test_cells_are_coarse():
    """Block edges, cut where a partial block changes, and merged where neighbours agree."""
    fi = patternc.compile("sink(5)", 200, block=16).to_flashinfer_variable()
    assert fi.block_row_sz.tolist() == [[200]] and fi.block_col_sz.tolist() == [[5, 195]]
    fi = patternc.compile("chunk(48)", 200, block=16).to_flashinfer_variable()
    assert fi.block_row_sz.tolist() == [[48, 48, 48, 48, 8]]
    fi = patternc.compile("causal & chunk(48)", 200, block=16).to_flashinfer_variable()
    assert fi.block_row_sz.tolist() == fi.block_col_sz.tolist()  # causal: diagonal cells are squares
    assert {0, 48, 96, 144, 192} <= set(np.cumsum([0, *fi.block_row_sz[0]]).tolist())


def test_kv_heads_get_their_own_cells_padded_to_one_count():
    stack = patternc.Stack("causal & chunk(16 * (2 + h // 2))", heads=4, kv_heads=2)
    cp = patternc.compile(stack, 200, block=16)
    fi = cp.to_flashinfer_variable()
    assert fi.block_mask_map.shape[0] == 2 and fi.block_row_sz.shape == (2, fi.block_mask_map.shape[1])
    assert (fi.block_row_sz.sum(axis=1) == 200).all()
    np.testing.assert_array_equal(dense(fi), cp.to_dense(layer=0)[[0, 2]])


def test_a_partition_past_the_limit_is_refused():
    cp = patternc.compile("causal & chunk(48)", 4096, block=16)
    with pytest.raises(patternc.PatternSizeError, match="exceeds the limit of 1,000"):
        from patternc.export.flashinfer import to_flashinfer_variable

        to_flashinfer_variable(cp, 0, max_cells=1000)


# ---- the converter, on FlashInfer's own documented example -----------------------------------------

# VariableBlockSparseAttentionWrapper's docstring: a 3 x 3 map of cells of 1, 2, 3 rows and 3, 1, 2 columns
MAP = np.array([[[0, 0, 1], [1, 0, 1], [0, 1, 1]]], bool)
ROWS, COLS = np.array([[1, 2, 3]]), np.array([[3, 1, 2]])


def test_converter_reads_the_documented_example():
    want = ["000011", "111011", "111011", "000111", "000111", "000111"]
    got = flashinfer_variable_to_dense(MAP, ROWS, COLS, causal=False)[0]
    assert ["".join("1" if x else "0" for x in row) for row in got] == want
    # with cells of one token it is the block mask itself (BlockSparseAttentionWrapper's example)
    ones = np.ones((1, 3), np.int64)
    np.testing.assert_array_equal(flashinfer_variable_to_dense(MAP, ones, ones, causal=False)[0], MAP[0])


def test_converter_applies_causal_bottom_right_per_block_row():
    """causal=True masks kv_idx > q_idx + kv_len - qo_len within each block row's selected keys:
    block row 1 (queries 1-2) holds keys 0-2 and 4-5 (kv_len 5, qo_len 2), so query 1 sees keys
    0, 1, 2 and 4, and query 0 (kv_len 2, qo_len 1) keys 4 and 5: k <= q only where a block row
    ends on its own diagonal."""
    got = flashinfer_variable_to_dense(MAP, ROWS, COLS, causal=True)[0]
    assert ["".join("1" if x else "0" for x in row) for row in got] == \
        ["000011", "111010", "111011", "000100", "000110", "000111"]


def test_converter_refuses_inconsistent_input():
    with pytest.raises(patternc.PatternMeaningError, match=r"must be \(H, MB, NB\)"):
        flashinfer_variable_to_dense(MAP[0], ROWS, COLS, causal=False)
    with pytest.raises(patternc.PatternMeaningError, match="sum to the same n"):
        flashinfer_variable_to_dense(MAP, ROWS, np.array([[3, 1, 3]]), causal=False)
