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
from patternc.lower.algebra import Difference, Union
from patternc.lower.diffs import Band
from patternc.lower.grid import EMPTY, FULL, KIND, PARTIAL, Blocks, Grid
from patternc.lower.node import Lowered, block_masks, distinct_blocks, resolve
from patternc.lower.rules import simplify

__all__ = ["LayerFlow", "layer_flows", "pairs_in_blocks"]


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
        heads = {cp.node(layer, h): cp.block_layout(layer, h) for h in range(cp.heads)}
        key = frozenset(heads)
        if key not in flows:
            flows[key] = _flow(heads, cp.grid, causal)
        out.append(flows[key])
    return out


def _merge(heads: dict[Lowered, Layout], node: Lowered, grid: Grid) -> Blocks:
    """The union's blocks from the heads' compiled layouts: a block is FULL if any head's is,
    and a block several heads hold only partially is settled by counting pairs."""
    if len(heads) == 1:
        (layout,) = heads.values()
        return Blocks(layout.rows(), layout.indices.astype(np.int64),
                      np.where(layout.full, FULL, PARTIAL).astype(KIND))
    keys = np.concatenate([l.rows() * grid.nbk + l.indices for l in heads.values()])
    kinds = np.concatenate([np.where(l.full, FULL, PARTIAL).astype(KIND) for l in heads.values()])
    order = np.argsort(keys, kind="stable")
    keys, kinds = keys[order], kinds[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    merged = np.maximum.reduceat(kinds, starts) if len(keys) else kinds
    shared = np.diff(np.append(starts, len(keys))) > 1
    rows, cols = keys[starts] // grid.nbk, keys[starts] % grid.nbk
    undecided = shared & (merged == PARTIAL)
    if undecided.any():
        merged[undecided] = resolve(node, grid, rows[undecided], cols[undecided])
    return Blocks(rows, cols, merged)


def _flow(heads: dict[Lowered, Layout], grid: Grid, causal: bool) -> LayerFlow:
    # Sort by repr so the union is built the same way every run (dict order follows the heads).
    node = reduce(lambda a, b: simplify(Union(a, b)), sorted(heads, key=repr))
    blocks = _merge(heads, node, grid)
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
