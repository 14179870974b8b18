"""Rows of bits packed in uint64 words: the reachability state, one row per position (or block).

Row ``q`` of a state has bit ``k`` set when ``q`` has heard from ``k``. A layer's update is
``new[q] = old[q] | OR of old[k] over every k that q attends``: gathers and OR-reductions of rows,
64 positions per machine word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GATHER_BUDGET", "OrPlan", "count_bits", "identity", "or_rows_into", "prefix_mask", "words"]

GATHER_BUDGET = 1 << 24  # words gathered per chunk (128 MiB): bounds memory for any pattern


def words(width: int) -> int:
    """uint64 words per row of ``width`` bits."""
    return -(-width // 64)


def identity(size: int) -> np.ndarray:
    """(size, words(size)) rows with only bit ``i`` set in row ``i``: every position hears itself."""
    rows = np.zeros((size, words(size)), np.uint64)
    idx = np.arange(size)
    rows[idx, idx // 64] = np.uint64(1) << (idx % 64).astype(np.uint64)
    return rows


def prefix_mask(size: int, width: int) -> np.ndarray:
    """(size, words(width)) rows where row ``i`` has bits ``0..i`` set: the causal envelope."""
    w = words(width)
    word_index = np.arange(w)[None, :]
    last = np.arange(size)[:, None]  # highest bit set in each row
    full_words = word_index < last // 64
    partial = word_index == last // 64
    shift = (last % 64 + 1).astype(np.uint64)
    # (1 << shift) - 1 with shift == 64 meaning all ones
    tail = np.where(shift == 64, ~np.uint64(0), (np.uint64(1) << (shift % np.uint64(64))) - np.uint64(1))
    return np.where(full_words, ~np.uint64(0), np.where(partial, tail, np.uint64(0))).astype(np.uint64)


def count_bits(rows: np.ndarray) -> int:
    """Total number of set bits."""
    return int(np.bitwise_count(rows).sum(dtype=np.int64))


@dataclass(frozen=True, slots=True)
class OrPlan:
    """How to apply ``out[targets[i]] |= source[picks[i]]`` fast, worked out once per layer.

    Links along a diagonal (``targets - picks`` constant over a run of consecutive targets, as in
    every window, band or stride) become one OR of two slices: no gather, no copy. The rest are
    gathered in chunks and OR-reduced per target.
    """

    slices: tuple[tuple[int, int, int], ...]  # (first target, first pick, length)
    targets: np.ndarray  # the remaining links, sorted by target
    picks: np.ndarray

    @staticmethod
    def of(targets: np.ndarray, picks: np.ndarray) -> OrPlan:
        if len(targets) == 0:
            return OrPlan((), targets, picks)
        offsets = targets - picks
        order = np.lexsort((targets, offsets))  # by diagonal, then by target
        t_sorted, d_sorted = targets[order], offsets[order]
        breaks = np.flatnonzero((np.diff(d_sorted) != 0) | (np.diff(t_sorted) != 1)) + 1
        starts = np.concatenate(([0], breaks))
        lengths = np.diff(np.concatenate((starts, [len(order)])))
        long_runs = lengths >= _SLICE_MIN
        slices = tuple((int(t_sorted[s]), int(t_sorted[s] - d_sorted[s]), int(length))
                       for s, length in zip(starts[long_runs], lengths[long_runs], strict=True))
        rest = np.ones(len(order), bool)
        rest[np.repeat(starts[long_runs], lengths[long_runs]) + _ranks(lengths[long_runs])] = False
        keep = np.sort(order[rest])  # back to target order
        return OrPlan(slices, targets[keep], picks[keep])

    def apply(self, out: np.ndarray, source: np.ndarray) -> None:
        for first, pick, length in self.slices:
            out[first : first + length] |= source[pick : pick + length]
        _gather_or(out, source, self.targets, self.picks)


def or_rows_into(out: np.ndarray, source: np.ndarray, targets: np.ndarray, picks: np.ndarray) -> None:
    """``out[targets[i]] |= source[picks[i]]`` for every i; ``targets`` sorted ascending."""
    OrPlan.of(targets, picks).apply(out, source)


_SLICE_MIN = 32  # rows a diagonal run needs before a slice beats the gather


def _ranks(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ..., len - 1 for each run length, concatenated."""
    total = int(lengths.sum())
    return np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _gather_or(out: np.ndarray, source: np.ndarray, targets: np.ndarray, picks: np.ndarray) -> None:
    if len(targets) == 0:
        return
    chunk = max(1, GATHER_BUDGET // max(1, source.shape[1]))
    for s in range(0, len(targets), chunk):
        t, p = targets[s : s + chunk], picks[s : s + chunk]
        starts = np.flatnonzero(np.concatenate(([True], t[1:] != t[:-1])))
        out[t[starts]] |= np.bitwise_or.reduceat(source[p], starts, axis=0)
