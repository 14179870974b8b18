"""Block-level reachability bounds, for any sequence length.

With square blocks, two block matrices bracket the exact token-level state:

- lower: block (Q, K) is set only when every envelope pair in it is certainly covered. A layer
  adds its envelope-full blocks E and E o lower (q hears all of J, each of which heard all of K);
- upper: block (Q, K) is set whenever some pair in it may be covered. It starts at the diagonal
  blocks (every position hears itself) and a layer adds S o upper, S its stored blocks.

Covered fractions weigh each set block by its envelope pairs. When upper covers the envelope first
at depth d, no stack mixes before d; when lower covers it at d', mixing happens by d'. Each bound
may use its own block size: coarser blocks only loosen the upper bound, and they keep its cost
within reach when layers are dense in blocks (a stride of sqrt(n) touches n^1.5 blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patternc.lower.grid import Grid
from patternc.reachability.bits import OrPlan, identity, prefix_mask, words
from patternc.reachability.layers import LayerFlow

__all__ = ["BoundRun", "run_lower", "run_upper"]


@dataclass(frozen=True, slots=True)
class BoundRun:
    """One bound run through the layers."""

    growth: tuple[float, ...]  # covered fraction of the envelope after each layer of the stack
    depth: int | None  # first depth at which the bound covers the envelope (None: not in the run)
    stalled: bool  # the bound stopped changing short of the envelope
    state: np.ndarray  # (nb, words) blocks set after the stack's own depth
    grid: Grid


class _Envelope:
    """The envelope in blocks, and the envelope pairs held by any set of blocks."""

    def __init__(self, grid: Grid, causal: bool) -> None:
        nb, b, n = grid.nbq, grid.bq, grid.n
        self.sizes = np.minimum(b, n - np.arange(nb) * b)  # tokens per block (the last may be short)
        self.causal = causal
        self.blocks = prefix_mask(nb, nb) if causal else prefix_mask(nb, nb)[-1:].repeat(nb, axis=0)
        self.below = self.blocks & ~identity(nb) if causal else self.blocks
        self.total = n * (n + 1) // 2 if causal else n * n
        self.last_short = b - int(self.sizes[-1])
        self.last_word, self.last_bit = (nb - 1) // 64, np.uint64(1) << np.uint64((nb - 1) % 64)
        self.b = b

    def covers(self, state: np.ndarray) -> bool:
        return not ((state & self.blocks) ^ self.blocks).any()

    def fraction(self, state: np.ndarray) -> float:
        """Envelope pairs in the set blocks over all envelope pairs."""
        full = state & self.below  # blocks wholly inside the envelope
        per_row = np.bitwise_count(full).sum(axis=1, dtype=np.int64) * self.b
        per_row -= ((full[:, self.last_word] & self.last_bit) != 0) * self.last_short
        pairs = int((per_row * self.sizes).sum())
        if self.causal:  # diagonal blocks hold their lower triangle
            idx = np.arange(len(self.sizes))
            on = ((state[idx, idx // 64] >> (idx % 64).astype(np.uint64)) & np.uint64(1)).astype(np.int64)
            pairs += int((on * self.sizes * (self.sizes + 1) // 2).sum())
        return pairs / self.total


def _bits(rows: np.ndarray, cols: np.ndarray, nb: int) -> np.ndarray:
    out = np.zeros((nb, words(nb)), np.uint64)
    np.bitwise_or.at(out, (rows, cols // 64), np.uint64(1) << (cols % 64).astype(np.uint64))
    return out


def _run(flows: list[LayerFlow], grid: Grid, causal: bool, max_depth: int, lower: bool) -> BoundRun:
    assert grid.bq == grid.bk, "block-level bounds need square blocks"
    nb, depth = grid.nbq, len(flows)
    envelope = _Envelope(grid, causal)
    state = np.zeros((nb, words(nb)), np.uint64) if lower else identity(nb)
    steps: dict[int, tuple] = {}
    growth: list[float] = []
    at_depth, reached, unchanged, t = state, None, 0, 0
    while t < max(max_depth, depth):
        flow = flows[t % depth]
        if id(flow) not in steps:
            pick = flow.envelope_full if lower else slice(None)
            rows, cols = flow.blocks.rows[pick], flow.blocks.cols[pick]
            steps[id(flow)] = (OrPlan.of(rows, cols), _bits(rows, cols, nb) if lower else None)
        plan, own = steps[id(flow)]
        new = state | own if lower else state.copy()  # lower: the layer's own blocks count at once
        plan.apply(new, state)
        t += 1
        unchanged = unchanged + 1 if np.array_equal(new, state) else 0
        state = new
        if t <= depth:
            growth.append(envelope.fraction(state))
        if t == depth:
            at_depth = state
        if envelope.covers(state):
            reached = t
            break
        if unchanged >= depth:
            break
    growth += [envelope.fraction(state)] * (depth - len(growth))
    if t < depth:
        at_depth = state
    stalled = reached is None and unchanged >= depth
    return BoundRun(tuple(growth), reached, stalled, at_depth, grid)


def run_lower(flows: list[LayerFlow], grid: Grid, causal: bool, max_depth: int) -> BoundRun:
    """Certified coverage: ``depth`` is a depth by which the stack certainly mixes."""
    return _run(flows, grid, causal, max_depth, lower=True)


def run_upper(flows: list[LayerFlow], grid: Grid, causal: bool, max_depth: int) -> BoundRun:
    """Possible coverage: ``depth`` is a depth before which the stack cannot mix; ``stalled``
    proves it never does."""
    return _run(flows, grid, causal, max_depth, lower=False)
