"""The packed-bit helpers of ``patternc.reachability.bits`` against plain numpy booleans.

Bit ``k`` of a row lives in word ``k // 64`` at bit ``k % 64``; ``unpack`` below reads rows back
with ``np.unpackbits`` (little-endian words, so little-endian bytes and bits).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patternc.reachability import bits
from patternc.reachability.bits import count_bits, identity, or_rows_into, prefix_mask, words

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="unpack assumes little-endian words")


def unpack(rows: np.ndarray, width: int) -> np.ndarray:
    """(m, words) uint64 -> (m, width) bool."""
    as_bytes = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), -1)
    return np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :width].astype(bool)


def pack(dense: np.ndarray) -> np.ndarray:
    """(m, width) bool -> (m, words(width)) uint64."""
    m, width = dense.shape
    padded = np.zeros((m, words(width) * 64), bool)
    padded[:, :width] = dense
    return np.packbits(padded, axis=1, bitorder="little").view(np.uint64).reshape(m, -1)


WIDTHS = [1, 2, 63, 64, 65, 127, 128, 129, 200]


@pytest.mark.parametrize("width", WIDTHS, ids=[f"w{w}" for w in WIDTHS])
def test_pack_round_trip(width):
    dense = np.random.default_rng(width).random((7, width)) < 0.5
    assert np.array_equal(unpack(pack(dense), width), dense)


@pytest.mark.parametrize("width, want", [(1, 1), (63, 1), (64, 1), (65, 2), (128, 2), (129, 3)])
def test_words(width, want):
    assert words(width) == want


@pytest.mark.parametrize("size", WIDTHS, ids=[f"n{n}" for n in WIDTHS])
def test_identity(size):
    rows = identity(size)
    assert rows.dtype == np.uint64 and rows.shape == (size, words(size))
    assert np.array_equal(unpack(rows, words(size) * 64)[:, :size], np.eye(size, dtype=bool))
    assert not unpack(rows, words(size) * 64)[:, size:].any(), "bits set past the width"


@pytest.mark.parametrize("size, width", [
    pytest.param(1, 1, id="1x1"),
    pytest.param(64, 64, id="64x64"),
    pytest.param(65, 65, id="65x65"),
    pytest.param(130, 130, id="130x130"),
    pytest.param(10, 200, id="short_rows_wide"),
    pytest.param(200, 200, id="200x200"),
])
def test_prefix_mask(size, width):
    rows = prefix_mask(size, width)
    assert rows.dtype == np.uint64 and rows.shape == (size, words(width))
    dense = unpack(rows, words(width) * 64)
    want = np.zeros_like(dense)
    want[:, :size] = np.tril(np.ones((size, size), bool))
    assert np.array_equal(dense, want)


@pytest.mark.parametrize("dense", [
    pytest.param(np.zeros((3, 70), bool), id="zeros"),
    pytest.param(np.ones((3, 200), bool), id="ones"),
    pytest.param(np.random.default_rng(0).random((9, 131)) < 0.3, id="random"),
])
def test_count_bits(dense):
    assert count_bits(pack(dense)) == int(dense.sum())


def test_count_bits_of_all_ones_words():
    assert count_bits(np.full((1000, 3), ~np.uint64(0))) == 1000 * 3 * 64


# ---- or_rows_into --------------------------------------------------------------------------------


def reference(out: np.ndarray, source: np.ndarray, targets, picks) -> np.ndarray:
    want = out.copy()
    for t, p in zip(targets, picks, strict=True):
        want[t] |= source[p]
    return want


def run(out, source, targets, picks) -> np.ndarray:
    got = out.copy()
    or_rows_into(got, source, np.asarray(targets, np.int64), np.asarray(picks, np.int64))
    return got


def random_rows(rng, m, width):
    return pack(rng.random((m, width)) < 0.2)


def test_or_rows_into_nothing_to_do():
    rng = np.random.default_rng(1)
    out, source = random_rows(rng, 5, 70), random_rows(rng, 6, 70)
    z = np.zeros(0, np.int64)
    assert np.array_equal(run(out, source, z, z), out)


@pytest.mark.parametrize("length", [1, 31, 32, 33, 100], ids=lambda n: f"run{n}")
@pytest.mark.parametrize("offset", [-5, 0, 7], ids=lambda d: f"d{d}")
def test_or_rows_into_one_diagonal_run(length, offset):
    # targets t, picks t - offset: one slice when the run is at least the slice threshold long
    rng = np.random.default_rng(length)
    m = 130
    out, source = random_rows(rng, m, 150), random_rows(rng, m, 150)
    targets = np.arange(10, 10 + length)
    picks = targets - offset
    assert np.array_equal(run(out, source, targets, picks), reference(out, source, targets, picks))


def test_or_rows_into_window_band_and_stray_links():
    # a causal window of 40 (long diagonals), a stride (short runs of distinct offsets), strays
    rng = np.random.default_rng(2)
    n = 300
    q = np.arange(n)[:, None]
    k = np.arange(n)[None, :]
    allowed = ((q - k >= 0) & (q - k < 40)) | ((q - k) % 37 == 0) | (rng.random((n, n)) < 0.002)
    targets, picks = np.nonzero(allowed)  # sorted by target
    out, source = random_rows(rng, n, n), random_rows(rng, n, n)
    assert np.array_equal(run(out, source, targets, picks), reference(out, source, targets, picks))


def test_or_rows_into_repeated_links_and_different_row_counts():
    rng = np.random.default_rng(3)
    out, source = random_rows(rng, 20, 100), random_rows(rng, 50, 100)  # (nbq, W) from (nbk, W)
    targets = np.sort(rng.integers(0, 20, 400))
    picks = rng.integers(0, 50, 400)
    targets = np.concatenate((targets, np.arange(20)))  # plus a diagonal of 20, and duplicates
    picks = np.concatenate((picks, np.arange(20) + 30))
    order = np.argsort(targets, kind="stable")
    targets, picks = targets[order], picks[order]
    assert np.array_equal(run(out, source, targets, picks), reference(out, source, targets, picks))


def test_or_rows_into_in_small_gather_chunks(monkeypatch):
    # one target's links split across chunks: each chunk must OR into, not overwrite, the target
    monkeypatch.setattr(bits, "GATHER_BUDGET", 5)
    rng = np.random.default_rng(4)
    out, source = random_rows(rng, 12, 64), random_rows(rng, 30, 64)
    targets = np.repeat(np.arange(12), 7)
    picks = rng.integers(0, 30, len(targets))
    assert np.array_equal(run(out, source, targets, picks), reference(out, source, targets, picks))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_or_rows_into_matches_reference(data):
    m_out = data.draw(st.integers(1, 90))
    m_src = data.draw(st.integers(1, 90))
    width = data.draw(st.sampled_from([1, 64, 65, 130]))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    links = []
    for _ in range(data.draw(st.integers(0, 4))):  # diagonal runs, some past the slice threshold
        length = data.draw(st.integers(1, min(m_out, m_src, 70)))
        first = data.draw(st.integers(0, m_out - length))
        pick = data.draw(st.integers(0, m_src - length))
        links += [(first + i, pick + i) for i in range(length)]
    links += [(int(t), int(p)) for t, p in zip(rng.integers(0, m_out, data.draw(st.integers(0, 60))),
                                               rng.integers(0, m_src, 60), strict=False)]
    links.sort(key=lambda link: link[0])
    targets = [t for t, _ in links]
    picks = [p for _, p in links]
    out, source = random_rows(rng, m_out, width), random_rows(rng, m_src, width)
    assert np.array_equal(run(out, source, targets, picks), reference(out, source, targets, picks))
