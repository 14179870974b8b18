"""Token-exact reachability: who has heard from whom after each layer, bit for bit.

The state has one row of n bits per position (n^2 / 8 bytes: 32 MiB at n = 16,384). A layer ORs
into each row the rows of the positions it attends: FULL blocks through one OR per key block,
PARTIAL blocks pair by pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np

from patternc.lower.algebra import Union
from patternc.lower.diffs import Band
from patternc.lower.grid import FULL, Grid
from patternc.lower.node import Lowered
from patternc.reach.bits import count_bits, identity, or_rows_into, prefix_mask
from patternc.reach.layers import LayerFlow, pairs_in_blocks

__all__ = ["ExactRun", "run_exact"]


@dataclass(frozen=True, slots=True)
class _Step:
    """A layer ready to apply: its bands (a window, causal attention), then whatever else it
    allows as FULL blocks by block row and the pairs of its PARTIAL blocks."""

    bands: tuple[Band, ...]
    full_rows: np.ndarray
    full_cols: np.ndarray
    pair_q: np.ndarray
    pair_k: np.ndarray


@dataclass(frozen=True, slots=True)
class ExactRun:
    """Result of running the stack (repeated past its depth when needed)."""

    growth: tuple[float, ...]  # covered fraction of the envelope after each layer of the stack
    mixing_depth: int | None  # first depth covering the envelope; None if never or not reached
    never: bool  # True when the state stopped changing without covering the envelope
    depth_run: int  # layers simulated
    state: np.ndarray  # (n, words) reach bits after the stack's own depth
    envelope: np.ndarray | None  # (n, words) causal envelope bits, None when it is every pair


def _union_terms(node: Lowered) -> list[Lowered]:
    return [*_union_terms(node.left), *_union_terms(node.right)] if isinstance(node, Union) else [node]


def _prepare(flow: LayerFlow, grid: Grid) -> _Step:
    # OR distributes over union: bands go through sliding ORs, the other terms through blocks.
    terms = _union_terms(flow.node)
    bands = tuple(t for t in terms if isinstance(t, Band))
    others = [t for t in terms if not isinstance(t, Band)]
    if not others:
        z = np.zeros(0, np.int64)
        return _Step(bands, z, z, z, z)
    rest = reduce(Union, others)
    blocks = rest.enumerate(grid) if bands else flow.blocks
    full = blocks.kinds == FULL
    pair_q, pair_k = pairs_in_blocks(rest, grid, blocks.rows[~full], blocks.cols[~full])
    return _Step(bands, blocks.rows[full], blocks.cols[full], pair_q, pair_k)


def _or_over_band(state: np.ndarray, band: Band) -> np.ndarray:
    """Row q: OR of rows k with lo <= q - k <= hi (van Herk / Gil-Werman: O(n) whatever the width).

    Rows are cut in runs of the band's width; within each run a forward and a backward running OR
    are kept, and any window of exactly that width is one backward OR | one forward OR.
    """
    n, w = state.shape
    lo, hi = max(band.lo, 1 - n), min(band.hi, n - 1)
    width = hi - lo + 1
    if width <= 0:
        return np.zeros_like(state)
    # Pad so that every window [q - hi, q - lo] lies inside the padded rows and has full width.
    before, after = max(hi, 0), max(-lo, 0)
    total = -(-(before + n + after) // width) * width
    padded = np.zeros((total, w), np.uint64)
    padded[before : before + n] = state
    runs = padded.reshape(-1, width, w)
    forward = np.bitwise_or.accumulate(runs, axis=1).reshape(total, w)
    backward = np.bitwise_or.accumulate(runs[:, ::-1], axis=1)[:, ::-1].reshape(total, w)
    first = np.arange(n) - hi + before  # padded index of each window's first row
    return backward[first] | forward[first + width - 1]


def _apply(state: np.ndarray, step: _Step, grid: Grid) -> np.ndarray:
    new = state.copy()
    for band in step.bands:
        new |= _or_over_band(state, band)
    if len(step.full_rows):
        key_blocks = np.bitwise_or.reduceat(state, np.arange(0, grid.n, grid.bk), axis=0)  # (nbk, W)
        heard = np.zeros((grid.nbq, state.shape[1]), np.uint64)
        or_rows_into(heard, key_blocks, step.full_rows, step.full_cols)
        new |= np.repeat(heard, grid.bq, axis=0)[: grid.n]
    or_rows_into(new, state, step.pair_q, step.pair_k)
    return new


def run_exact(flows: list[LayerFlow], grid: Grid, causal: bool, max_depth: int) -> ExactRun:
    """Run the layers in order, cycling past the stack's depth until the envelope is covered, the
    state stops changing (never), or ``max_depth`` layers have run."""
    n, depth = grid.n, len(flows)
    steps: dict[int, _Step] = {}
    envelope = prefix_mask(n, n) if causal else None
    total = n * (n + 1) // 2 if causal else n * n

    def covered(state: np.ndarray) -> float:
        return count_bits(state & envelope if causal else state) / total

    state = identity(n)
    growth: list[float] = []
    at_depth = state
    mixing, never, unchanged, t = None, False, 0, 0
    while t < max(max_depth, depth):
        flow = flows[t % depth]
        key = id(flow)
        if key not in steps:
            steps[key] = _prepare(flow, grid)
        new = _apply(state, steps[key], grid)
        t += 1
        unchanged = unchanged + 1 if np.array_equal(new, state) else 0
        state = new
        fraction = covered(state)
        if t <= depth:
            growth.append(fraction)
        if t == depth:
            at_depth = state
        if fraction == 1.0:
            mixing = t
            break
        if unchanged >= depth:  # a whole cycle changed nothing: a fixpoint short of the envelope
            never = True
            break
    # Coverage and the state cannot change once covered or at a fixpoint: fill the stack's depth.
    growth += [growth[-1] if growth else covered(state)] * (depth - len(growth))
    if t < depth:
        at_depth = state
    return ExactRun(tuple(growth), mixing, never, t, at_depth, envelope)
