"""Where information from a key gets to, layer by layer, and the path that comes closest to a query
it never reaches.

Token by token (``spread_tokens``, ``token_path``) the answer is exact: the state has one bit per
(position, key followed), updated by the same layer step as the exact reachability run. On blocks
(``spread_blocks``, ``closest_path``) it is a pair of sound bounds: a block is *possibly* reached
when a stored block links it to a possibly reached one (an over-approximation: blocks hold tokens
the key may never reach), and *certainly* reached, every token of it, when a FULL block links it
to a block holding a certainly reached token.

>>> spread = patternc.reach(patternc.compile("causal & window(4)", n=64), keys=[0]).spread
>>> spread.tokens(layer=1)[0]
(4, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from patternc.lower.grid import FULL, Grid
from patternc.reachability.bits import OrPlan, words
from patternc.reachability.exact import (  # the exact run's own layer step, so both agree
    apply_layer,
    prepare_layer,
)
from patternc.reachability.layers import LayerFlow

__all__ = ["KeySpread", "closest_path", "spread_blocks", "spread_tokens", "token_path"]


@dataclass(frozen=True, slots=True)
class KeySpread:
    """Who has heard each followed key after each layer of the stack.

    Positions are tokens when ``exact`` (``unit == 1``), else blocks of ``unit`` tokens. Bit ``s``
    of ``certain[t, x]`` says position x has certainly heard ``keys[s]`` after t layers (t = 0: the
    key alone); ``possible`` is the same for "may have heard" and equals ``certain`` when exact.
    """

    keys: tuple[int, ...]
    n: int
    unit: int
    causal: bool
    certain: np.ndarray  # (layers + 1, positions, words(len(keys))) uint64
    possible: np.ndarray  # same shape

    @property
    def exact(self) -> bool:
        return self.unit == 1

    @property
    def layers(self) -> int:
        return len(self.certain) - 1

    def reached(self, layer: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(certain, possible) bool per position for ``keys[index]`` after ``layer`` layers."""
        word, bit = index // 64, np.uint64(index % 64)
        return tuple(((a[layer, :, word] >> bit) & np.uint64(1)).astype(bool)
                     for a in (self.certain, self.possible))

    def tokens(self, layer: int) -> list[tuple[int, int]]:
        """Per key, (certain, possible) counts of the tokens of its envelope (every token when not
        causal, else ``q >= key``) that have heard it after ``layer`` layers."""
        sizes = np.minimum(self.unit, self.n - np.arange(-(-self.n // self.unit)) * self.unit)
        out = []
        for index, key in enumerate(self.keys):
            counts = []
            for reached in self.reached(layer, index):
                total = int(sizes[reached].sum())
                if self.causal:  # tokens of the key's own position block that lie before the key
                    own = key // self.unit
                    total -= int(reached[own]) * (key - own * self.unit)
                counts.append(total)
            certain, possible = counts
            if not self.exact:  # the key itself, whose own block is rarely certain in full
                certain += not self.reached(layer, index)[0][key // self.unit]
            out.append((certain, possible))
        return out


def _sources(keys: Sequence[int], positions: int, unit: int) -> np.ndarray:
    """(positions, words) with bit s set in the row holding ``keys[s]``."""
    state = np.zeros((positions, words(len(keys))), np.uint64)
    for s, key in enumerate(keys):
        state[key // unit, s // 64] |= np.uint64(1) << np.uint64(s % 64)
    return state


def spread_tokens(flows: list[LayerFlow], grid: Grid, keys: Sequence[int], causal: bool) -> KeySpread:
    """Exact spread of ``keys`` through the layers (``flows`` on ``grid``, as the exact run uses)."""
    state = _sources(keys, grid.n, 1)
    states = [state]
    steps: dict[int, object] = {}
    for flow in flows:
        if id(flow) not in steps:
            steps[id(flow)] = prepare_layer(flow, grid)
        state = apply_layer(state, steps[id(flow)], grid)
        states.append(state)
    stacked = np.stack(states)
    return KeySpread(tuple(int(k) for k in keys), grid.n, 1, causal, stacked, stacked)


def spread_blocks(flows: list[LayerFlow], grid: Grid, keys: Sequence[int], causal: bool) -> KeySpread:
    """Block-level bounds on the spread of ``keys`` (square blocks of ``grid``)."""
    sources = _sources(keys, grid.nbq, grid.bq)
    possible, touched, whole = sources, sources, np.zeros_like(sources)  # touched: has a certain token
    possibles, wholes = [possible], [whole]
    plans: dict[int, tuple[OrPlan, OrPlan]] = {}
    for flow in flows:
        if id(flow) not in plans:
            full = flow.blocks.kinds == FULL
            plans[id(flow)] = (OrPlan.of(flow.blocks.rows, flow.blocks.cols),
                               OrPlan.of(flow.blocks.rows[full], flow.blocks.cols[full]))
        every, full_only = plans[id(flow)]
        possible_next = possible.copy()
        every.apply(possible_next, possible)
        whole_next = whole.copy()  # a FULL block (Q, K) gives all of Q the certain token in K
        full_only.apply(whole_next, touched)
        possible, whole, touched = possible_next, whole_next, touched | whole_next
        possibles.append(possible)
        wholes.append(whole)
    return KeySpread(tuple(int(k) for k in keys), grid.n, grid.bq, causal, np.stack(wholes),
                     np.stack(possibles))


def token_path(flows: list[LayerFlow], grid: Grid, pair: tuple[int, int], causal: bool,
               ) -> tuple[tuple[int, int, int], ...]:
    """``((layer, token, token), ...)``: a chain of tokens from key ``k`` (layer 0) to the token
    nearest query ``q`` among those that have heard ``k`` after the stack's depth, where each
    token has heard the one before after that layer: the same token (the residual stream) or one
    it attends in that layer."""
    q, k = pair
    spread = spread_tokens(flows, grid, [k], causal)
    heard = [spread.reached(t, 0)[0] for t in range(spread.layers + 1)]
    first_heard = np.full(grid.n, spread.layers + 1)
    for t in range(spread.layers, -1, -1):
        first_heard[heard[t]] = t
    reached = np.flatnonzero(heard[-1])
    x = int(reached[np.lexsort((reached, np.abs(reached - q)))[0]])  # nearest q; ties: the lower
    chain = [x]
    for t in range(spread.layers, 0, -1):
        if not heard[t - 1][x]:  # x heard k in layer t, from a token that had heard it before
            before = np.flatnonzero(heard[t - 1])
            attended = before[flows[t - 1].node.predicate(np.full(len(before), x), before)]
            x = int(attended[np.lexsort((attended, first_heard[attended]))[0]])
        chain.append(x)
    return tuple((t, x, x) for t, x in enumerate(reversed(chain)))


def closest_path(flows: list[LayerFlow], grid: Grid, pair: tuple[int, int], causal: bool,
                 ) -> tuple[tuple[int, int, int], ...]:
    """``((layer, first token, last token), ...)``: a path on the layered block graph (node
    ``(t, X)``: block X after layer t; an edge ``(t-1, J) -> (t, Q)`` when layer t stores block
    (Q, J), plus the residual ``(t-1, Q) -> (t, Q)``) from ``k``'s block at layer 0 to the block
    nearest ``q``'s among those it may reach at the stack's depth. Blocks over-approximate tokens:
    the path shows how far information may get, not that any token of a range heard ``k``."""
    q, k = pair
    spread = spread_blocks(flows, grid, [k], causal)
    maybe = [spread.reached(t, 0)[1] for t in range(spread.layers + 1)]
    reached = np.flatnonzero(maybe[-1])
    x = int(reached[np.lexsort((reached, np.abs(reached - q // grid.bq)))[0]])
    chain = [x]
    for t in range(spread.layers, 0, -1):
        if not maybe[t - 1][x]:  # x was reached in layer t through a stored block (x, J)
            blocks = flows[t - 1].blocks
            sources = blocks.cols[(blocks.rows == x) & maybe[t - 1][blocks.cols]]
            x = int(sources.min())
        chain.append(x)
    return tuple((t, x * grid.bq, min((x + 1) * grid.bq, grid.n) - 1) for t, x in enumerate(reversed(chain)))
