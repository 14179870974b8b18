"""What one layer lets through: the union of its heads, as blocks and as token pairs.

Information moves from ``k`` to ``q`` in a layer when any of its heads allows ``(q, k)``, so a
layer is the union of its heads' patterns, compiled exactly like any other union (FULL where the
heads together cover a block, resolved pair by pair where needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np

from patternc.compiled import CompiledPattern
from patternc.layout import Layout
from patternc.lower.algebra import Difference, Union, merge_union
from patternc.lower.grid import EMPTY, FULL, KIND, PARTIAL, Blocks, Grid, expand_ranges
from patternc.lower.node import Lowered, block_masks, distinct_blocks
from patternc.lower.rules import simplify
from patternc.primitives.offsets import Band
from patternc.primitives.random_blocks import drawn_on_blocks as node_drawn_on_blocks

__all__ = ["LayerFlow", "coarsen", "drawn_on_blocks", "layer_flows", "pairs_in_blocks"]


@dataclass(frozen=True, slots=True)
class LayerFlow:
    """One layer as blocks: ``node`` is the union of its heads, ``blocks`` its exact blocks, and
    ``envelope_full`` marks the blocks in which the layer allows every envelope pair."""

    node: Lowered
    blocks: Blocks
    envelope_full: np.ndarray  # bool per block of ``blocks``


def layer_flows(cp: CompiledPattern, causal: bool) -> list[LayerFlow]:
    """The flow of every layer of ``cp``; layers with the same heads share one flow."""
    flows: dict[frozenset, LayerFlow] = {}
    out = []
    for layer in range(cp.layers):
        heads = {cp.node(layer, h): cp.layout(layer, h) for h in range(cp.heads)}
        key = frozenset(heads)
        if key not in flows:
            flows[key] = _flow(heads, cp.grid, causal)
        out.append(flows[key])
    return out


def _head_blocks(layout: Layout) -> Blocks:
    return Blocks(layout.rows(), layout.indices.astype(np.int64),
                  np.where(layout.full, FULL, PARTIAL).astype(KIND))


def _flow(heads: dict[Lowered, Layout], grid: Grid, causal: bool) -> LayerFlow:
    # Sort by repr so the union is built the same way every run (dict order follows the heads).
    node = reduce(lambda a, b: simplify(Union(a, b)), sorted(heads, key=repr))
    blocks = merge_union([_head_blocks(layout) for layout in heads.values()], node, grid)
    full = blocks.kinds == FULL
    if not causal:
        return LayerFlow(node, blocks, full)
    # Causal envelope: blocks wholly below the diagonal need FULL; blocks the diagonal crosses need
    # every pair k <= q, i.e. nothing of the envelope missing from the layer.
    q0, q1 = grid.q_bounds(blocks.rows)
    k0, k1 = grid.k_bounds(blocks.cols)
    below = k1 - 1 <= q0
    crossing = (k0 <= q1 - 1) & ~below
    missing = Difference(Band(0, grid.n), node)
    covered = np.zeros(len(blocks), bool)
    covered[crossing] = missing.classify(grid, blocks.rows[crossing], blocks.cols[crossing]) == EMPTY
    return LayerFlow(node, blocks, (below & full) | covered)


def drawn_on_blocks(cp: CompiledPattern) -> bool:
    """Whether some head uses ``random()``: its draw is made on ``cp``'s own blocks, so the stack
    compiled at another block size is another pattern, and ``cp`` must not be recompiled."""

    return any(node_drawn_on_blocks(cp.node(l, h)) for l in range(cp.layers) for h in range(cp.heads))


def coarsen(flow: LayerFlow, grid: Grid, block: int, causal: bool) -> LayerFlow:
    """The same layer on square blocks of ``block`` tokens, a multiple of both sides of ``grid``'s
    blocks, without recompiling. A coarse block holds whole blocks of ``grid``: it is stored when
    one of them is, FULL when all are, envelope-full when every one meeting the envelope is."""
    assert block % grid.bq == 0 and block % grid.bk == 0, "coarse blocks must hold whole blocks"
    coarse = Grid(grid.n, block, block)
    fine = flow.blocks
    key = (fine.rows * grid.bq // block) * coarse.nbk + fine.cols * grid.bk // block
    keys, inverse = np.unique(key, return_inverse=True)
    rows, cols = keys // coarse.nbk, keys % coarse.nbk
    r0, c0 = rows * (block // grid.bq), cols * (block // grid.bk)  # fine blocks inside: [r0, r1)
    r1 = np.minimum(r0 + block // grid.bq, grid.nbq)
    c1 = np.minimum(c0 + block // grid.bk, grid.nbk)
    full = np.bincount(inverse, fine.kinds == FULL, len(keys)) == (r1 - r0) * (c1 - c0)
    if causal:  # fine blocks meeting k <= q: in fine row r, columns up to (r's last query) // bk
        owner, r = expand_ranges(np.arange(len(keys)), r0, r1 - 1)
        last = (np.minimum((r + 1) * grid.bq, grid.n) - 1) // grid.bk
        meeting = np.bincount(owner, np.clip(last + 1, c0[owner], c1[owner]) - c0[owner], len(keys))
    else:
        meeting = (r1 - r0) * (c1 - c0)
    # A coarse block above the diagonal meets no envelope pair: never envelope-full (0 == 0).
    envelope_full = (meeting > 0) & (np.bincount(inverse, flow.envelope_full, len(keys)) == meeting)
    return LayerFlow(flow.node, Blocks(rows, cols, np.where(full, FULL, PARTIAL).astype(KIND)),
                     envelope_full)


def pairs_in_blocks(node: Lowered, grid: Grid, rows: np.ndarray, cols: np.ndarray,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every allowed (q, k) inside the given blocks, sorted by q; each distinct block content is
    evaluated once (see ``Lowered.block_key``)."""
    if len(rows) == 0:
        z = np.zeros(0, np.int64)
        return z, z
    first, inverse = distinct_blocks(node, grid, rows, cols)
    masks = block_masks(node, grid, rows[first], cols[first])  # (u, bq, bk)
    q0, _ = grid.q_bounds(rows)
    k0, _ = grid.k_bounds(cols)
    block, offset_q, offset_k = np.nonzero(masks[inverse])
    q, k = q0[block] + offset_q, k0[block] + offset_k
    order = np.argsort(q, kind="stable")
    return q[order], k[order]
