"""Token-exact reachability: who has heard from whom after each layer, bit for bit.

The state has one row of n bits per position (n^2 / 8 bytes: 32 MiB at n = 16,384). A layer ORs
into each row the rows of the positions it attends: FULL blocks through one OR per key block,
PARTIAL blocks pair by pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np

from patternc.lower.algebra import Intersect, Union
from patternc.lower.grid import FULL, Grid
from patternc.lower.node import Lowered
from patternc.lower.rules import simplify
from patternc.primitives.offsets import Band
from patternc.reachability.bits import OrPlan, count_bits, identity, prefix_mask
from patternc.reachability.layers import LayerFlow, pairs_in_blocks

__all__ = ["ExactRun", "Step", "apply_layer", "prepare_layer", "run_exact"]


@dataclass(frozen=True, slots=True)
class Step:
    """A layer ready to apply: its offset progressions (windows, dilations, strides), then
    whatever else it allows as FULL blocks by block row and the pairs of its PARTIAL blocks."""

    progressions: tuple[tuple[int, int, int], ...]  # (step, m_lo, m_hi): see Lowered.progression
    full: OrPlan | None  # block row <- key block, for FULL blocks
    pairs: OrPlan  # query <- key, for the pairs of PARTIAL blocks


@dataclass(frozen=True, slots=True)
class ExactRun:
    """Result of running the stack (repeated past its depth when needed)."""

    growth: tuple[float, ...]  # covered fraction of the envelope after each layer of the stack
    mixing_depth: int | None  # first depth covering the envelope; None if never or not reached
    never: bool  # True when the state stopped changing without covering the envelope
    state: np.ndarray  # (n, words) reach bits after the stack's own depth
    envelope: np.ndarray | None  # (n, words) causal envelope bits, None when it is every pair


def _union_terms(node: Lowered) -> list[Lowered]:
    """Terms whose union is ``node``; ``band & (a | b)`` is split into ``band & a``, ``band & b``
    so that ``causal & (window(w) | global(g))`` yields the band ``causal & window(w)``."""
    if isinstance(node, Union):
        return [*_union_terms(node.left), *_union_terms(node.right)]
    if isinstance(node, Intersect):
        for band, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(band, Band) and isinstance(other, Union):
                return [*_union_terms(simplify(Intersect(band, other.left))),
                        *_union_terms(simplify(Intersect(band, other.right)))]
    return [node]


def prepare_layer(flow: LayerFlow, grid: Grid) -> Step:
    # OR distributes over union: offset progressions (windows, dilations, strides) go through
    # sliding ORs, the other terms through blocks and pairs.
    progressions, others = [], []
    for term in _union_terms(flow.node):
        found = term.progression(grid.n)
        (progressions if found else others).append(found or term)
    z = np.zeros(0, np.int64)
    if not others:
        return Step(tuple(progressions), None, OrPlan.of(z, z))
    rest = reduce(Union, others)
    blocks = rest.enumerate(grid) if progressions else flow.blocks
    full = blocks.kinds == FULL
    pair_q, pair_k = pairs_in_blocks(rest, grid, blocks.rows[~full], blocks.cols[~full])
    full_plan = OrPlan.of(blocks.rows[full], blocks.cols[full]) if full.any() else None
    return Step(tuple(progressions), full_plan, OrPlan.of(pair_q, pair_k))


def _or_over_band(state: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Row q: OR of rows k with lo <= q - k <= hi (van Herk / Gil-Werman: O(n) whatever the width).

    Rows are cut in runs of the band's width; within each run a forward and a backward running OR
    are kept, and any window of exactly that width is one backward OR | one forward OR.
    """
    n, w = state.shape
    lo, hi = max(lo, 1 - n), min(hi, n - 1)
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


def _or_over_progression(state: np.ndarray, step: int, m_lo: int, m_hi: int) -> np.ndarray:
    """Row q: OR of rows q - step * m for m_lo <= m <= m_hi: a band within each residue class."""
    out = np.zeros_like(state)
    for r in range(min(step, len(state))):
        out[r::step] = _or_over_band(state[r::step], m_lo, m_hi)
    return out


def apply_layer(state: np.ndarray, step: Step, grid: Grid) -> np.ndarray:
    new = state.copy()
    for progression in step.progressions:
        new |= _or_over_progression(state, *progression)
    if step.full is not None:
        key_blocks = np.bitwise_or.reduceat(state, np.arange(0, grid.n, grid.bk), axis=0)  # (nbk, W)
        heard = np.zeros((grid.nbq, state.shape[1]), np.uint64)
        step.full.apply(heard, key_blocks)
        new |= np.repeat(heard, grid.bq, axis=0)[: grid.n]
    step.pairs.apply(new, state)
    return new


def run_exact(flows: list[LayerFlow], grid: Grid, causal: bool, max_depth: int) -> ExactRun:
    """Run the layers in order, cycling past the stack's depth until the envelope is covered, the
    state stops changing (never), or ``max_depth`` layers have run."""
    n, depth = grid.n, len(flows)
    steps: dict[int, Step] = {}
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
            steps[key] = prepare_layer(flow, grid)
        new = apply_layer(state, steps[key], grid)
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
    return ExactRun(tuple(growth), mixing, never, at_depth, envelope)
