"""FlashMask's column intervals (``patternc.export.flashmask``): exact where representable, in the
fewest values, a ``PatternError`` naming the term where not; the converter back to a dense mask
checked against the examples in Paddle's own ``flashmask_attention`` documentation. (Paddle is
not installed here: the converter is written from its documentation and reference code.)"""

from __future__ import annotations

import numpy as np
import pytest
from test_flex_oracle import EXPRESSIONS, SHAPES

import patternc
from patternc.export.flashmask import FORMATS, flashmask_to_dense

# patterns FlashMask must take, and the form they take (causal, values)
REPRESENTABLE = [
    pytest.param("causal", (True, 1), id="causal"),
    pytest.param("causal & window(33)", (True, 1), id="sliding_window"),
    pytest.param("causal & (window(16) | sink(4))", (True, 1), id="window_sink"),
    pytest.param("causal & (window(16) | global(8))", (True, 1), id="window_global_causal"),
    pytest.param("causal & chunk(48)", (True, 1), id="causal_chunks"),
    pytest.param("causal & (chunk(48) | sink(4))", (True, 1), id="chunks_sink"),
    pytest.param("causal - chunk(32)", (True, 2), id="causal_outside_chunks"),
    pytest.param("causal | prefix(40)", (False, 2), id="prefix_lm"),
    pytest.param("chunk(48)", (False, 2), id="documents"),
    pytest.param("sink(5)", (False, 2), id="sink"),
    pytest.param("global(20)", (False, 2), id="global"),
    pytest.param("window(16) | global(8)", (False, 4), id="longformer"),
    pytest.param("band(5, 10)", (False, 2), id="band_below_the_diagonal"),
    pytest.param("none", (True, 1), id="none"),
    pytest.param("all", (False, 2), id="all"),
]

# patterns it cannot take, and the term the error names
NOT_REPRESENTABLE = [
    pytest.param("causal & stride(7)", "stride(7)", id="stride"),
    pytest.param("causal & (window(16) | dilated(8, 3))", "dilated(8, 3)", id="dilation"),
    pytest.param("causal & (window(16) | random(2, seed=3))", "random(2, seed=3)", id="random_blocks"),
    pytest.param("causal & (window(16) | tokens([0, 30, 100]))", "tokens([0, 30, 100])", id="token_rows"),
    pytest.param("causal & diagonals([0, 5, 40])", "diagonals([0, 5, 40])", id="diagonals"),
    pytest.param("causal & window(8) | causal & band(20, 30)", "causal & window(8) | causal & band(20, 30)",
                 id="two_bands_only_together"),
]


def read_back(fm):
    return flashmask_to_dense(fm.startend_row_indices, fm.causal)[0, 0]


@pytest.mark.parametrize("n, block", SHAPES)
@pytest.mark.parametrize("expr", [p.values[0] for p in EXPRESSIONS])
def test_oracle_table_round_trips_exactly_or_is_refused(expr, n, block):
    cp = patternc.compile(expr, n, block=block)
    try:
        fm = cp.to_flashmask()
    except patternc.PatternMeaningError as err:
        assert "FlashMask cannot express" in str(err) and "at most two per key column" in str(err)
        return
    assert fm.startend_row_indices.dtype == np.int32 and fm.startend_row_indices.shape[:3] == (1, 1, n)
    np.testing.assert_array_equal(read_back(fm), cp.to_dense(0, 0))


@pytest.mark.parametrize("n, block", SHAPES)
@pytest.mark.parametrize("expr, form", REPRESENTABLE)
def test_patterns_people_use_are_representable_in_the_fewest_values(expr, form, n, block):
    cp = patternc.compile(expr, n, block=block)
    fm = cp.to_flashmask()
    assert (fm.causal, fm.values) == form
    assert fm.exact
    np.testing.assert_array_equal(read_back(fm), cp.to_dense(0, 0))
    # no form with fewer values (or the causal one at a tie) is exact: the choice is the first that is
    for causal, values in FORMATS[:FORMATS.index(form)]:
        assert not _some_exact(cp, causal, values), f"{expr} also fits causal={causal} with {values} values"


def _some_exact(cp, causal: bool, values: int) -> bool:
    """Whether the export's own rule finds ``(causal, values)`` exact for this head."""
    from patternc.export.columns import column_runs
    from patternc.export.flashmask import _fits

    return _fits(column_runs(cp.node(), cp.layout()), (causal, values)) is not None


@pytest.mark.parametrize("expr, term", NOT_REPRESENTABLE)
def test_the_error_names_the_term_and_a_column(expr, term):
    cp = patternc.compile(expr, 256, block=32)
    with pytest.raises(patternc.PatternMeaningError) as info:
        cp.to_flashmask()
    message = str(info.value)
    assert message.startswith("layer 0, KV head 0 (query head 0): FlashMask cannot express")
    assert term in message and "is allowed for query rows [" in message
    assert "masks at most two per key column" in message


def test_paddles_own_sliding_window_is_ours_with_one_more_key():
    """Paddle builds causal window_size=w as LTS[k] = min(k + w + 1, n): w + 1 keys per query."""
    n, w = 300, 37
    fm = patternc.compile(f"causal & window({w + 1})", n, block=64).to_flashmask()
    np.testing.assert_array_equal(fm.startend_row_indices[0, 0, :, 0], np.minimum(np.arange(n) + w + 1, n))


# Examples from Paddle's flashmask_attention documentation (n = 10): the indices and, row by row,
# which keys each query attends ("1" attends).
DOCUMENTED = [
    pytest.param(True, [[4], [4], [4], [4], [7], [7], [7], [10], [10], [10]],
                 ["1000000000", "1100000000", "1110000000", "1111000000", "0000100000", "0000110000",
                  "0000111000", "0000000100", "0000000110", "0000000111"], id="causal_document"),
    pytest.param(True, [[3], [4], [5], [6], [7], [8], [9], [10], [10], [10]],
                 ["1000000000", "1100000000", "1110000000", "0111000000", "0011100000", "0001110000",
                  "0000111000", "0000011100", "0000001110", "0000000111"], id="sliding_window"),
    pytest.param(False, [[4, 0], [4, 0], [4, 0], [4, 0], [7, 4], [7, 4], [7, 4], [10, 7], [10, 7], [10, 7]],
                 ["1111000000"] * 4 + ["0000111000"] * 3 + ["0000000111"] * 3, id="document"),
    pytest.param(False, [[10, 10, 0, 0], [10, 10, 0, 0], [4, 10, 0, 0], [5, 10, 0, 0], [6, 10, 2, 3],
                         [7, 10, 2, 4], [8, 10, 2, 5], [9, 10, 2, 6], [10, 10, 2, 7], [10, 10, 2, 8]],
                 ["1111111111", "1111111111", "1111000000", "1111100000", "1101110000", "1100111000",
                  "1100011100", "1100001110", "1100000111", "1100000011"], id="global_sliding_window"),
    pytest.param(True, [[4, 7]] * 4 + [[10, 10]] * 6,
                 ["1000000000", "1100000000", "1110000000", "1111000000", "0000100000", "0000110000",
                  "0000111000", "1111111100", "1111111110", "1111111111"], id="causal_blockwise"),
    pytest.param(False, [[10, 0]] * 5 + [[10, 5], [10, 6], [10, 7], [10, 8], [10, 9]],
                 ["1111100000"] * 5 + ["1111110000", "1111111000", "1111111100", "1111111110",
                                       "1111111111"], id="prefix_lm_causal"),
]


@pytest.mark.parametrize("causal, indices, rows", DOCUMENTED)
def test_converter_reads_paddles_documented_examples(causal, indices, rows):
    idx = np.array(indices, np.int32)[None, None]  # (1, 1, 10, values)
    want = np.array([[c == "1" for c in row] for row in rows])
    np.testing.assert_array_equal(flashmask_to_dense(idx, causal)[0, 0], want)


@pytest.mark.parametrize("expr, index", [
    pytest.param("causal & window(3)", 1, id="sliding_window"),
    pytest.param("global(2) | window(2)", 3, id="global_sliding_window"),
    pytest.param("causal | prefix(5)", 5, id="prefix_lm_causal"),
])
def test_our_export_writes_paddles_documented_indices(expr, index):
    """Where our language says a documented pattern, the export writes the documented values."""
    causal, indices, _ = DOCUMENTED[index].values
    fm = patternc.compile(expr, 10, block=4).to_flashmask()
    assert fm.causal is causal
    np.testing.assert_array_equal(fm.startend_row_indices[0, 0], np.array(indices))


def test_kv_heads_give_one_row_of_values_each():
    stack = patternc.Stack("causal & window(16 * (h // 2 + 1))", heads=4, kv_heads=2)
    cp = patternc.compile(stack, 200, block=(32, 16))
    fm = cp.to_flashmask()
    assert fm.startend_row_indices.shape == (1, 2, 200, 1)
    dense = flashmask_to_dense(fm.startend_row_indices, fm.causal)[0]
    np.testing.assert_array_equal(dense, cp.to_dense(layer=0)[[0, 2]])


def test_bad_converter_input_is_refused():
    with pytest.raises(patternc.PatternMeaningError, match=r"must be \[B, H, n, 2\|4\] with causal=False"):
        flashmask_to_dense(np.zeros((1, 1, 4, 1), np.int32), causal=False)
    with pytest.raises(patternc.PatternSizeError, match="exceeds the limit"):
        flashmask_to_dense(np.zeros((1, 1, 100, 1), np.int32), causal=True, max_elements=1000)


def test_a_quarter_million_tokens_take_columns_not_a_grid():
    """At n = 2**18 an n x n grid would be 64 GiB: the export works from blocks and column runs."""
    n = 2**18
    cp = patternc.compile("causal & (window(4096) | sink(64))", n)
    fm = cp.to_flashmask()
    lts = fm.startend_row_indices[0, 0, :, 0]
    assert (fm.causal, fm.values) == (True, 1)
    np.testing.assert_array_equal(lts[:64], n)  # sinks: every later row
    np.testing.assert_array_equal(lts[64:], np.minimum(np.arange(64, n) + 4096, n))
