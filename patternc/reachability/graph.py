"""The layered attention graph of a stack, as a networkx ``DiGraph``: the graph ``reach`` walks.

Node ``(t, x)`` is position ``x`` after ``t`` layers (``t = 0``: the input). An edge
``(t - 1, k) -> (t, q)`` says that in stack layer ``(t - 1) % layers`` some head lets ``q`` hear
``k``; the residual stream adds ``(t - 1, x) -> (t, x)`` for every ``x``. So ``q`` has heard ``k``
after ``t`` layers exactly when ``(0, k)`` reaches ``(t, q)``: the mixing depth, the receptive
fields and the closest path of ``patternc.reach`` are questions about this graph, which networkx
answers too (docs/graph.md).

Up to ``exact_limit`` tokens a position is a token; above it, a square block of the size ``reach``
uses for its block bounds, and an edge links two blocks when some head stores that block (an
over-approximation of the tokens, like the block-level closest path).

>>> g = patternc.compile("causal & window(4)", n=64).graph()
>>> g.number_of_nodes(), g.number_of_edges(), g.edges[(0, 3), (1, 5)]
(128, 250, {'heads': (0,)})
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from functools import cache, cached_property
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from patternc.compiled import CompiledPattern, whole_pattern
from patternc.errors import PatternSizeError, check_int
from patternc.layout import Layout
from patternc.limits import MAX_GRAPH_EDGES, require
from patternc.lower.grid import FULL, PARTIAL, Grid, expand_ranges
from patternc.lower.node import PAIR_BUDGET, Lowered, pair_counts
from patternc.reachability.layers import LayerFlow, drawn_on_blocks, layer_flows, pairs_in_blocks
from patternc.reachability.report import EXACT_LIMIT, _square, _square_flows

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["layered_graph"]

KIND_NAMES = {FULL: "FULL", PARTIAL: "PARTIAL"}


def layered_graph(compiled: CompiledPattern, depth: int | None = None,
                  exact_limit: int = EXACT_LIMIT) -> nx.DiGraph:
    """The layered graph of ``compiled`` through ``depth`` layers (default: the stack's own; more
    repeat the stack, as ``reach``'s ``max_depth`` does), as a new ``networkx.DiGraph``.

    Nodes are ``(t, x)`` for ``t`` in ``0..depth`` and ``x`` a token (``n <= exact_limit``) or a
    square block of ``graph["unit"]`` tokens, with node attributes ``first`` and ``last`` (its
    tokens). Edges into rank ``t`` come from stack layer ``(t - 1) % graph["layers"]``; each has
    ``heads``, the heads of that layer that allow the pair (store the block), ``()`` for a residual
    edge no head gives; block edges also have ``kind``: ``"FULL"`` when the layer's heads together
    allow every pair of the block, ``"PARTIAL"`` when some, ``None`` for the residual alone.
    ``graph`` holds ``n``, ``unit``, ``depth``, ``layers``, ``heads`` and ``causal``.

    A graph of more than ``MAX_GRAPH_EDGES`` edges is refused before anything is built: networkx
    keeps a few hundred bytes per edge.

    >>> g = layered_graph(patternc.compile("causal & (window(4) | sink(1))", n=64), depth=2)
    >>> import networkx as nx
    >>> nx.has_path(g, (0, 0), (2, 63)), nx.has_path(g, (0, 1), (2, 63))
    (True, False)
    """
    cp = whole_pattern(compiled, "the layered graph", "follows whole sequences through the layers")
    for name, value, low in (("depth", depth, 1), ("exact_limit", exact_limit, 0)):
        if value is not None:
            check_int(value, f"graph(): {name}", low=low)
    depth = cp.layers if depth is None else int(depth)
    exact = cp.n <= exact_limit
    unit = 1 if exact else (math.lcm(*cp.block) if drawn_on_blocks(cp) else max(cp.block))
    positions = -(-cp.n // unit)
    what = (f"edges of the {'token' if exact else f'block ({unit} tokens)'} graph through {depth:,} layers "
            f"at n = {cp.n:,} ({(depth + 1) * positions:,} nodes)")
    hint = ("ask for fewer layers (depth=)" + (", or blocks: exact_limit below n" if exact
                                               else ", or compile with a larger block"))
    require(depth * positions, MAX_GRAPH_EDGES, f"residual {what}", hint)  # before any flow is built
    layers = _token_layers(cp) if exact else _block_layers(cp, unit)
    ranks = [layers[t % cp.layers] for t in range(depth)]
    least = sum(layer.least for layer in ranks)  # from the heads alone: refuses a huge graph at once
    if least > MAX_GRAPH_EDGES:
        raise PatternSizeError(f"{what}: at least {least:,}, over the limit of {MAX_GRAPH_EDGES:,}; {hint}")
    require(sum(layer.edges for layer in ranks), MAX_GRAPH_EDGES, what, hint)
    return _build(cp, layers, depth, unit, positions)


class _Layer:
    """One stack layer's edges, known in three steps of growing cost: ``least``, a lower bound on
    their count from the heads alone; ``edges``, their exact count; ``enumerated()``, the edges."""

    def __init__(self, least: int, count: Callable[[], int],
                 enumerate_edges: Callable[[], tuple[np.ndarray, np.ndarray, list[dict]]]) -> None:
        self.least = least
        self._count, self._enumerate = count, enumerate_edges
        self._edges: tuple[np.ndarray, np.ndarray, list[dict]] | None = None

    @cached_property
    def edges(self) -> int:
        return self._count()

    def enumerated(self) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """(q, k, data): edges sorted by (q, k), and one template dict per edge (shared: copy it)."""
        if self._edges is None:  # once: a stack repeated past its depth reuses its layers
            self._edges = self._enumerate()
        return self._edges


def _distinct_heads(cp: CompiledPattern, layer: int) -> tuple[list[Lowered], list[list[int]]]:
    """The distinct bound patterns of a layer's heads, and the heads that have each."""
    nodes: dict[Lowered, list[int]] = {}
    for h in range(cp.heads):
        nodes.setdefault(cp.node(layer, h), []).append(h)
    return list(nodes), list(nodes.values())


def _shared_layers(cp: CompiledPattern, make: Callable[[int, list[Lowered], list[list[int]]], _Layer],
                   ) -> list[_Layer]:
    """``make(layer, patterns, heads)`` once per distinct layer (the same pattern in every head)."""
    done: dict[tuple[Lowered, ...], _Layer] = {}
    out = []
    for l in range(cp.layers):
        key = tuple(cp.node(l, h) for h in range(cp.heads))
        if key not in done:
            done[key] = make(l, *_distinct_heads(cp, l))
        out.append(done[key])
    return out


def _mark(bits: np.ndarray, rows: np.ndarray, pattern: int) -> None:
    """Set the bit of distinct pattern ``pattern`` in ``rows`` of ``bits`` ((edges, ceil(patterns
    / 8)) uint8, as ``np.packbits`` lays them out): a layer may have many distinct heads."""
    bits[rows, pattern // 8] |= np.uint8(1 << (7 - pattern % 8))


def _templates(bits: np.ndarray, heads: list[list[int]], kinds: np.ndarray | None = None) -> list[dict]:
    """One attribute dict per edge: ``heads``, those whose pattern allows it (``bits``, see
    ``_mark``), and with ``kinds`` its block kind. Edges alike share one dict: the caller copies
    each (networkx keeps one per edge)."""
    signature = np.unique(np.ascontiguousarray(bits).view(np.dtype((np.void, bits.shape[1]))).ravel(),
                          return_inverse=True)[1].reshape(-1)
    key = signature if kinds is None else signature * 3 + kinds
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    made = []
    for i in first.tolist():
        patterns = np.flatnonzero(np.unpackbits(bits[i], count=len(heads)))
        data: dict = {"heads": tuple(sorted(h for d in patterns.tolist() for h in heads[d]))}
        if kinds is not None:
            data["kind"] = KIND_NAMES.get(int(kinds[i]))
        made.append(data)
    return list(map(made.__getitem__, inverse.reshape(-1).tolist()))


# ---- token level ---------------------------------------------------------------------------------


def _token_layers(cp: CompiledPattern) -> list[_Layer]:
    """The stack's layers on tokens: the pairs some head allows, plus the residual ``x -> x``."""
    allowed: dict[Lowered, int] = {}
    flows = cache(lambda: layer_flows(cp, cp.causal))  # the heads' unions, built only past ``least``

    def make(l: int, nodes: list[Lowered], heads: list[list[int]]) -> _Layer:
        for node, hs in zip(nodes, heads, strict=True):
            if node not in allowed:
                allowed[node] = _allowed_pairs(node, cp.layout(l, hs[0]))
        least = max(cp.n, *(allowed[node] for node in nodes))
        return _Layer(least, lambda: _token_count(flows()[l], cp.grid),
                      lambda: _token_edges(cp, l, flows()[l], nodes, heads))

    return _shared_layers(cp, make)


def _allowed_pairs(node: Lowered, layout: Layout) -> int:
    """Pairs one head allows: FULL blocks whole, PARTIAL ones counted (as ``head_stats`` does)."""
    grid, rows, cols = layout.grid, layout.rows(), layout.indices.astype(np.int64)
    q0, q1 = grid.q_bounds(rows[layout.full])
    k0, k1 = grid.k_bounds(cols[layout.full])
    partial = ~layout.full
    return int(((q1 - q0) * (k1 - k0)).sum() + pair_counts(node, grid, rows[partial], cols[partial]).sum())


def _token_count(flow: LayerFlow, grid: Grid) -> int:
    """Edges of a layer: the pairs its heads' union allows, plus the residuals no head gives."""
    layout = Layout.from_blocks(flow.blocks, grid)
    return _allowed_pairs(flow.node, layout) + grid.n - int(_allows_diagonal(flow, grid).sum())


def _allows_diagonal(flow: LayerFlow, grid: Grid) -> np.ndarray:
    """(n,) bool: the layer lets ``x`` hear ``x`` (the residual edge is then a head's too)."""
    x = np.arange(grid.n)
    kind = Layout.from_blocks(flow.blocks, grid).kind_of(x // grid.bq, x // grid.bk)
    out = kind == FULL
    partial = kind == PARTIAL
    out[partial] = flow.node.predicate(x[partial], x[partial])
    return out


def _token_edges(cp: CompiledPattern, layer: int, flow: LayerFlow, nodes: list[Lowered],
                 heads: list[list[int]]) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    grid, n = cp.grid, cp.n
    full = flow.blocks.kinds == FULL
    q0, q1 = grid.q_bounds(flow.blocks.rows[full])
    k0, k1 = grid.k_bounds(flow.blocks.cols[full])
    owner, q_full = expand_ranges(np.arange(int(full.sum())), q0, q1 - 1)  # every row of a FULL block
    q_full, k_full = expand_ranges(q_full, k0[owner], k1[owner] - 1)  # every key of that row
    codes = [q_full * n + k_full, np.flatnonzero(~_allows_diagonal(flow, grid)) * (n + 1)]
    rows, cols = flow.blocks.rows[~full], flow.blocks.cols[~full]
    batch = max(1, PAIR_BUDGET // (grid.bq * grid.bk))  # pairs_in_blocks holds (blocks, bq, bk) masks
    for s in range(0, len(rows), batch):
        q, k = pairs_in_blocks(flow.node, grid, rows[s: s + batch], cols[s: s + batch])
        codes.append(q * n + k)
    code = _distinct(np.concatenate(codes))  # sorted by (q, k)
    q, k = code // n, code % n
    bits = np.zeros((len(code), -(-len(nodes) // 8)), np.uint8)
    for d, node in enumerate(nodes):  # which heads allow each pair: as cp.allows, by distinct pattern
        kind = cp.layout(layer, heads[d][0]).kind_of(q // grid.bq, k // grid.bk)
        _mark(bits, np.flatnonzero(kind == FULL), d)
        partial = np.flatnonzero(kind == PARTIAL)
        for s in range(0, len(partial), PAIR_BUDGET):
            chosen = partial[s: s + PAIR_BUDGET]
            _mark(bits, chosen[node.predicate(q[chosen], k[chosen])], d)
    return q, k, _templates(bits, heads)


# ---- block level ---------------------------------------------------------------------------------


def _block_layers(cp: CompiledPattern, unit: int) -> list[_Layer]:
    """The stack's layers on the square blocks of ``unit`` tokens that ``reach``'s block-level path
    uses: the blocks some head stores, plus the residual on the diagonal."""
    own = drawn_on_blocks(cp)
    grid = Grid(cp.n, unit, unit)
    square = None if own else _square(cp, unit)
    merged = 1 if square else (unit // cp.block[0]) * (unit // cp.block[1])  # own blocks per square one
    codes: dict[Lowered, np.ndarray] = {}
    diagonal = np.arange(grid.nbq) * (grid.nbk + 1)
    # the heads' unions as reach builds them, for the kinds: only once the count is known
    flows = cache(lambda: _square_flows(cp, unit, cp.causal, layer_flows(cp, cp.causal) if own else None)[0])

    def make(l: int, nodes: list[Lowered], heads: list[list[int]]) -> _Layer:
        def mine() -> list[np.ndarray]:
            for node, hs in zip(nodes, heads, strict=True):
                if node not in codes:
                    codes[node] = _head_block_codes(cp, square, grid, l, hs[0])
            return [codes[node] for node in nodes]

        stored = [(square or cp).layout(l, hs[0]).nnz for hs in heads]
        least = max(grid.nbq, *(-(-nnz // merged) for nnz in stored))  # a square block holds <= merged
        return _Layer(least, lambda: len(_distinct(np.concatenate([diagonal, *mine()]))),
                      lambda: _block_edges(flows()[l], grid, mine(), heads))

    return _shared_layers(cp, make)


def _distinct(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values: a sort, faster here than ``np.unique``'s hash table on large arrays."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def _head_block_codes(cp: CompiledPattern, square: CompiledPattern | None, grid: Grid, layer: int,
                      head: int) -> np.ndarray:
    """Sorted ``row * nb + col`` of the square blocks one head stores: from the stack compiled at
    the square block, or, for a stack drawn on its own blocks (``square`` None), its blocks merged."""
    if square is not None:
        layout = square.layout(layer, head)
        return layout.rows() * grid.nbk + layout.indices
    layout = cp.layout(layer, head)
    rows = layout.rows() * cp.block[0] // grid.bq
    cols = layout.indices.astype(np.int64) * cp.block[1] // grid.bk
    return _distinct(rows * grid.nbk + cols)


def _block_edges(flow: LayerFlow, grid: Grid, codes: list[np.ndarray], heads: list[list[int]],
                 ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    nb = grid.nbq
    stored = flow.blocks.rows * nb + flow.blocks.cols
    code = _distinct(np.concatenate((stored, np.arange(nb) * (nb + 1))))  # sorted by (Q, K)
    kinds = np.zeros(len(code), np.int8)  # EMPTY: the residual alone
    kinds[np.searchsorted(code, stored)] = flow.blocks.kinds
    bits = np.zeros((len(code), -(-len(codes) // 8)), np.uint8)
    for d, mine in enumerate(codes):  # each head's blocks are among the union's
        _mark(bits, np.searchsorted(code, mine), d)
    return code // nb, code % nb, _templates(bits, heads, kinds)


# ---- the graph -----------------------------------------------------------------------------------


def _build(cp: CompiledPattern, layers: list[_Layer], depth: int, unit: int, positions: int) -> nx.DiGraph:
    """Fill a new DiGraph's adjacency directly, rank by rank, a node's neighbours as one dict: about
    half the time of ``add_edges_from``, which checks both ends of every edge one at a time
    (benchmarks/graph_speed.py). The structure is networkx's own: one data dict per edge, the same
    object under ``succ[u][v]`` and ``pred[v][u]`` (tests/test_reach_graph.py checks both)."""
    import networkx as nx  # here only: ``import patternc`` never loads networkx

    collecting = gc.isenabled()
    gc.disable()  # millions of new dicts, none in a cycle: the collector would rescan them all, often
    try:
        return _fill_graph(nx.DiGraph(), cp, layers, depth, unit, positions)
    finally:
        if collecting:
            gc.enable()


def _fill_graph(g: nx.DiGraph, cp: CompiledPattern, layers: list[_Layer], depth: int, unit: int,
                positions: int) -> nx.DiGraph:
    names = [[(t, x) for x in range(positions)] for t in range(depth + 1)]
    succ: list[list[dict]] = [[{} for _ in range(positions)] for _ in range(depth + 1)]
    pred: list[list[dict]] = [[{} for _ in range(positions)] for _ in range(depth + 1)]
    for t in range(1, depth + 1):
        q, k, templates = layers[(t - 1) % cp.layers].enumerated()
        data = list(map(dict.copy, templates))
        before, after = names[t - 1], names[t]
        # pred of rank t: edges are sorted by (q, k)
        pairs = zip(map(before.__getitem__, k.tolist()), data, strict=True)
        _fill(pred[t], pairs, np.bincount(q, minlength=positions))
        # succ of rank t - 1: the same edges by (k, q)
        order = np.argsort(k, kind="stable")
        pairs = zip(map(after.__getitem__, q[order].tolist()), map(data.__getitem__, order.tolist()),
                    strict=True)
        _fill(succ[t - 1], pairs, np.bincount(k, minlength=positions))
    g.graph.update(n=cp.n, unit=unit, depth=depth, layers=cp.layers, heads=cp.heads, causal=cp.causal)
    first = np.arange(positions) * unit
    ends = (np.minimum(first + unit, cp.n) - 1).tolist()
    spans = [{"first": a, "last": b} for a, b in zip(first.tolist(), ends, strict=True)]
    for t in range(depth + 1):
        g._node.update(zip(names[t], map(dict.copy, spans), strict=True))
        g._succ.update(zip(names[t], succ[t], strict=True))
        g._pred.update(zip(names[t], pred[t], strict=True))
    return g


def _fill(rows: list[dict], pairs: Iterator, counts: np.ndarray) -> None:
    """``rows[x]`` gets the next ``counts[x]`` (neighbour, data) pairs."""
    for x, count in enumerate(counts.tolist()):
        if count:
            rows[x] = dict(islice(pairs, count))
