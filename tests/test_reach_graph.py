"""The layered graph (``CompiledPattern.graph``) against a brute-force one, and networkx on that graph
as an independent oracle for ``reach``.

The brute-force graph is built with networkx's public ``add_edges_from`` from ``cp.to_dense()``:
node ``(t, x)`` is position ``x`` after ``t`` layers, an edge ``(t - 1, k) -> (t, q)`` where a head
of layer ``(t - 1) % L`` allows ``(q, k)``, plus the residual ``x -> x``. Then on random small stacks
networkx's own traversals (shortest path lengths, ancestors, descendants, ``is_path``) on the graph
must give ``reach``'s mixing depth, growth, receptive fields, unreachable pair and closest path, token
by token and, on blocks, its upper-bound depth, possible spread and block path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patternc
from patternc import Override, Stack
from patternc.reachability import graph as graph_module
from patternc.reachability import layered_graph, reach
from tests.stacks import per_head_stack
from tests.test_reach import expressions

# ---- the brute-force graph -----------------------------------------------------------------------


def reference_graph(cp: patternc.CompiledPattern, depth: int) -> nx.DiGraph:
    dense = cp.to_dense()  # (L, H, n, n)
    g = nx.DiGraph(n=cp.n, unit=1, depth=depth, layers=cp.layers, heads=cp.heads, causal=cp.causal)
    for t in range(depth + 1):
        g.add_nodes_from(((t, x), {"first": x, "last": x}) for x in range(cp.n))
    for t in range(1, depth + 1):
        allowed = dense[(t - 1) % cp.layers]  # (H, n, n)
        q, k = np.nonzero(allowed.any(axis=0) | np.eye(cp.n, dtype=bool))
        g.add_edges_from(((t - 1, int(b)), (t, int(a)),
                          {"heads": tuple(np.flatnonzero(allowed[:, a, b]).tolist())})
                         for a, b in zip(q, k, strict=True))
    return g


def same_graph(g: nx.DiGraph, want: nx.DiGraph) -> None:
    assert g.graph == want.graph
    assert dict(g.nodes(data=True)) == dict(want.nodes(data=True))
    assert list(g.nodes) == list(want.nodes)  # rank by rank, position by position
    assert {u: dict(v) for u, v in g.succ.items()} == {u: dict(v) for u, v in want.succ.items()}
    assert {u: dict(v) for u, v in g.pred.items()} == {u: dict(v) for u, v in want.pred.items()}


GRAPH_CASES = [
    pytest.param(Stack("causal & window(3)", layers=2, heads=2,
                       overrides=(Override("causal & stride(4)", None, (1, 2)),)), 37, 4, 3,
                 id="window_stride_cycled"),
    pytest.param(Stack("causal & (window(3) | random(1, seed=2))", layers=2), 37, (4, 8), 2,
                 id="random_rect"),
    pytest.param(Stack("band(-2, 3) | global(1)"), 37, 5, 2, id="non_causal_global"),
    pytest.param(Stack("band(1, 2)", layers=2), 20, 4, 2, id="empty_rows_no_self"),
    pytest.param(per_head_stack(), 50, 8, 2, id="per_head"),
    pytest.param(Stack("none"), 9, 4, 1, id="nothing_but_residual"),
    pytest.param(Stack("causal & window(h + 1)", heads=11), 30, 4, 1, id="eleven_distinct_heads"),
]


@pytest.mark.parametrize("stack, n, block, depth", GRAPH_CASES)
def test_token_graph_equals_the_brute_force_graph(stack, n, block, depth):
    cp = patternc.compile(stack, n=n, block=block)
    same_graph(cp.graph(depth=depth), reference_graph(cp, depth))


def test_each_edge_has_its_own_data_shared_by_succ_and_pred():
    """networkx's structure: ``G.edges[u, v]`` is one dict, seen from both ends, and no other edge's."""
    g = patternc.compile("causal & window(4)", n=32).graph()
    g.edges[(0, 3), (1, 5)]["weight"] = 2.0
    assert g.pred[(1, 5)][(0, 3)] == {"heads": (0,), "weight": 2.0}
    assert g.edges[(0, 4), (1, 5)] == {"heads": (0,)} and g.edges[(0, 3), (1, 4)] == {"heads": (0,)}
    assert all(g.succ[u][v] is g.pred[v][u] for u, v in g.edges)
    g.add_edge((1, 31), (0, 0))  # an ordinary graph: it takes changes as any other
    assert nx.has_path(g, (1, 31), (1, 3))


def test_edges_name_the_heads_that_allow_them():
    cp = patternc.compile(per_head_stack(), n=50, block=8)  # layer 1: heads 2-3 take stride(7) | sink(3)
    g = cp.graph()
    assert not g.has_edge((0, 0), (1, 40))  # sinks only in layer 1
    assert g.edges[(1, 0), (2, 40)]["heads"] == (2, 3)  # sink(3)
    assert g.edges[(1, 19), (2, 40)]["heads"] == (2, 3)  # stride(7)
    assert g.edges[(1, 33), (2, 40)]["heads"] == (0, 1, 2, 3)  # both windows and the stride
    assert g.edges[(1, 39), (2, 40)]["heads"] == (0, 1)  # both windows
    assert g.edges[(1, 30), (2, 40)]["heads"] == (1,)  # window(16), not window(8) nor the stride
    assert g.edges[(1, 40), (2, 40)]["heads"] == (0, 1, 2, 3)  # the residual, which every head gives too
    assert g.edges[(0, 40), (1, 40)]["heads"] == (0, 1, 2, 3)
    assert g.graph == {"n": 50, "unit": 1, "depth": 2, "layers": 2, "heads": 4, "causal": True}


def square_blocks(cp: patternc.CompiledPattern, layer: int, head: int, b: int) -> set[tuple[int, int]]:
    """Square blocks (Q, K) of side b in which (layer, head) allows a pair, from the dense mask."""
    q, k = np.nonzero(cp.to_dense(layer, head))
    return set(zip((q // b).tolist(), (k // b).tolist(), strict=True))


@pytest.mark.parametrize("stack, n, block", [
    pytest.param(per_head_stack(), 100, 8, id="per_head"),
    pytest.param(Stack("causal & (window(5) | global(1))", layers=2, heads=2,
                       overrides=(Override("causal & stride(9)", (1, 2), (1, 2)),)), 90, (4, 16), id="rect"),
    pytest.param(Stack("causal & (window(3) | random(1, seed=2))", layers=2), 96, (4, 8), id="random_rect"),
    pytest.param(Stack("causal & window(4 * h + 1)", heads=10), 64, 4, id="ten_distinct_heads"),
])
def test_block_graph_edges_are_the_blocks_heads_store(stack, n, block):
    """Block nodes: square blocks of reach's block (the lcm for random(): drawn on the compiled
    blocks); an edge where some head allows a pair in the block, ``heads`` those heads, ``kind``
    FULL when the heads together allow all of it, plus the residual (kind None when alone)."""
    cp = patternc.compile(stack, n=n, block=block)
    g = cp.graph(exact_limit=0, depth=3)
    b = math.lcm(*cp.block) if "random" in repr(stack) else max(cp.block)
    nb = -(-n // b)
    assert g.graph["unit"] == b == reach(cp, exact_limit=0).block[0]
    assert g.nodes[(2, nb - 1)] == {"first": (nb - 1) * b, "last": n - 1}
    dense = cp.to_dense()
    for t in range(1, 4):
        l = (t - 1) % cp.layers
        per_head = [square_blocks(cp, l, h, b) for h in range(cp.heads)]
        want = {(Q, K) for blocks in per_head for Q, K in blocks} | {(x, x) for x in range(nb)}
        got = {(v[1], u[1]) for u, v in g.in_edges([(t, x) for x in range(nb)])}
        assert got == want
        for Q, K in want:
            data = g.edges[(t - 1, K), (t, Q)]
            assert data["heads"] == tuple(h for h in range(cp.heads) if (Q, K) in per_head[h])
            pairs = dense[l].any(axis=0)[Q * b: (Q + 1) * b, K * b: (K + 1) * b]
            kind = None if not data["heads"] else "FULL" if pairs.all() else "PARTIAL"
            assert data["kind"] == kind, (t, Q, K)


# ---- refusals ------------------------------------------------------------------------------------


def test_a_graph_too_large_is_refused_before_it_is_built():
    cp = patternc.compile("conf/pattern/longformer.yaml", n=4096)
    with pytest.raises(patternc.PatternSizeError, match=r"edges of the token graph through 12 layers at "
                       r"n = 4,096 \(53,248 nodes\): at least [\d,]+, over the limit of 4,194,304; "
                       r"ask for fewer layers \(depth=\), or blocks: exact_limit below n"):
        cp.graph()
    assert cp.graph(exact_limit=0).graph["unit"] == 128  # on blocks it fits
    with pytest.raises(patternc.PatternSizeError, match=r"residual edges of the token graph through "
                       r"1,000,000 layers .*: 4,096,000,000 is over the limit"):
        cp.graph(depth=10**6)


def test_the_exact_count_is_refused_when_the_heads_alone_allow_it(monkeypatch):
    """Heads that overlap little: each fits the limit, their union (the edges) does not."""
    stack = Stack("causal & window(4)", heads=2, overrides=(Override("causal & stride(5)", None, (1, 2)),))
    cp = patternc.compile(stack, n=64, block=16)
    edges = cp.graph().number_of_edges()
    monkeypatch.setattr(graph_module, "MAX_GRAPH_EDGES", edges - 1)
    with pytest.raises(patternc.PatternSizeError, match=rf": {edges:,} is over the limit of {edges - 1:,};"):
        cp.graph()
    monkeypatch.setattr(graph_module, "MAX_GRAPH_EDGES", edges)
    assert cp.graph().number_of_edges() == edges


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 0}, "depth must be a positive integer, got 0"),
    ({"depth": "2"}, "depth must be a positive integer, got '2'"),
    ({"depth": True}, "depth must be a positive integer, got True"),
    ({"exact_limit": -1}, "exact_limit must be an integer >= 0, got -1"),
    ({"exact_limit": 2.5}, "exact_limit must be an integer >= 0, got 2.5"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(patternc.PatternMeaningError, match=re.escape(message)):
        patternc.compile("causal", n=16).graph(**kwargs)


def test_only_whole_compiled_sequences_make_a_graph():
    with pytest.raises(patternc.PatternMeaningError, match="compiled for the queries"):
        patternc.compile("causal", n=64, block=16, first_query=32).graph()
    with pytest.raises(patternc.PatternMeaningError, match=r"from a CompiledPattern .*got str"):
        layered_graph("causal & window(4)")


# ---- networkx as the oracle of reach -------------------------------------------------------------


@dataclass(frozen=True)
class SmallCase:
    stack: Stack
    n: int
    block: tuple[int, int]
    max_depth: int


@st.composite
def small_cases(draw) -> SmallCase:
    """1-3 layers x 1-3 heads drawn from a pool of expressions (``test_reach``'s), half under
    ``causal &``; small lengths and square or rectangular blocks, so each graph is a few thousand
    edges and networkx's pure-Python traversals stay quick."""
    n = draw(st.sampled_from([1, 2, 3, 5, 8, 13, 17, 24, 31, 33]))
    layers, heads = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pool = draw(st.lists(expressions(n), min_size=1, max_size=3))
    declared = draw(st.sampled_from([None, None, True, False]))
    if declared or draw(st.booleans()):
        pool = [f"causal & ({e})" for e in pool]
    rules = tuple(Override(draw(st.sampled_from(pool)), (l, l + 1), (h, h + 1))
                  for l in range(layers) for h in range(heads))
    stack = Stack(pool[0], layers=layers, heads=heads, causal=declared, overrides=rules)
    bq = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 16]))
    bk = draw(st.sampled_from([bq, 1, 2, 4, 8]))
    return SmallCase(stack, n, (bq, bk), draw(st.integers(1, 6)))


def first_heard(g: nx.DiGraph, positions: int) -> np.ndarray:
    """(positions, positions) int: the first rank t at which (t, q) is reachable from (0, k), by
    networkx's BFS; every edge climbs one rank, so that is the path length. -1: never."""
    out = np.full((positions, positions), -1)
    for k in range(positions):
        for (t, q), length in nx.single_source_shortest_path_length(g, (0, k)).items():
            assert length == t
            if out[q, k] < 0:
                out[q, k] = t
    return out


def envelope(positions: int, causal: bool) -> np.ndarray:
    return np.tril(np.ones((positions, positions), bool)) if causal else np.ones((positions, positions), bool)


def mixing_depth(first: np.ndarray, inside: np.ndarray) -> int | None:
    """The first rank by which every envelope pair is reachable; reach counts from one layer on."""
    times = first[inside]
    return None if (times < 0).any() else max(1, int(times.max(initial=0)))


def nearest(candidates, target: int) -> int:
    return min(candidates, key=lambda x: (abs(x - target), x))


def check_tokens(cp: patternc.CompiledPattern, max_depth: int) -> None:
    n, layers = cp.n, cp.layers
    depth = max(max_depth, layers)
    report = reach(cp, max_depth=max_depth, keys=range(n))
    g = cp.graph(depth=depth)
    assert g.number_of_nodes() == (depth + 1) * n
    first = first_heard(g, n)
    inside = envelope(n, cp.causal)
    # the mixing depth (the stack repeated up to max_depth) and the growth layer by layer
    assert report.mixing_depth == mixing_depth(first, inside)
    heard_by = [(first >= 0) & (first <= t) for t in range(layers + 1)]
    assert [lo for lo, _ in report.growth] == [(heard_by[t] & inside).sum() / inside.sum()
                                               for t in range(1, layers + 1)]
    # receptive fields: who each key reaches (descendants), who each query hears (ancestors)
    for index, k in enumerate(report.spread.keys):
        for t in range(layers + 1):
            reached = {x for s, x in nx.descendants(g, (0, k)) | {(0, k)} if s == t}
            assert set(np.flatnonzero(report.spread.reached(t, index)[0]).tolist()) == reached
    for q in range(n):
        field = {x for s, x in nx.ancestors(g, (layers, q)) | {(layers, q)} if s == 0}
        assert field == set(np.flatnonzero(heard_by[layers][q]).tolist())
    # the unreachable pair and the closest path
    missing = inside & ~heard_by[layers]
    if report.unreachable is None:
        assert not missing.any()
        return
    q, k = report.unreachable
    assert not nx.has_path(g, (0, k), (layers, q)) and inside[q, k]
    gaps = np.abs(np.subtract(*np.nonzero(missing)))
    assert abs(q - k) == gaps.max()
    path = [(t, x) for t, x, _ in report.closest_path]
    assert nx.is_path(g, path) and path[0] == (0, k)
    assert path[-1][1] == nearest([x for t, x in nx.descendants(g, (0, k)) | {(0, k)} if t == layers], q)


def check_blocks(cp: patternc.CompiledPattern, max_depth: int) -> None:
    """On blocks, reach's upper bound is reachability on the block graph: its depth is the block
    graph's mixing depth, its possible spread the block graph's descendants, its path a path there."""
    layers = cp.layers
    depth = max(max_depth, layers)
    report = reach(cp, exact_limit=0, max_depth=max_depth, keys=[0, cp.n - 1])
    g = cp.graph(depth=depth, exact_limit=0)
    b = g.graph["unit"]
    assert report.block == (b, b)
    nb = -(-cp.n // b)
    first = first_heard(g, nb)
    assert report.mixing_depth_bounds[0] == mixing_depth(first, envelope(nb, cp.causal))
    for index, k in enumerate(report.spread.keys):
        for t in range(layers + 1):
            possible = report.spread.reached(t, index)[1]
            assert set(np.flatnonzero(possible).tolist()) == set(np.flatnonzero(
                (first[:, k // b] >= 0) & (first[:, k // b] <= t)).tolist())
    if report.closest_path is not None:
        q, k = report.unreachable
        path = [(t, first_token // b) for t, first_token, _ in report.closest_path]
        assert nx.is_path(g, path) and path[0] == (0, k // b)
        reached = np.flatnonzero((first[:, k // b] >= 0) & (first[:, k // b] <= layers))
        assert path[-1][1] == nearest(reached.tolist(), q // b)


ORACLE = settings(max_examples=200, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@ORACLE
@given(small_cases())
def test_reach_agrees_with_networkx_on_the_graph(case):
    cp = patternc.compile(case.stack, n=case.n, block=case.block)
    check_tokens(cp, case.max_depth)
    check_blocks(cp, case.max_depth)


@pytest.mark.parametrize("spec, n, block, layers", [
    pytest.param("causal & window(8)", 64, 8, 3, id="window_too_shallow"),
    pytest.param("causal & (window(32) | global(16))", 512, 64, 3, id="global_prefix"),
    pytest.param("conf/pattern/sparse_transformer_strided.yaml", 256, 16, None, id="strided_file"),
])
def test_reach_agrees_with_networkx_on_known_stacks(spec, n, block, layers):
    stack = Stack(spec, layers=layers) if layers else patternc.load_stack(spec)
    cp = patternc.compile(stack, n=n, block=block)
    if n <= 64:
        check_tokens(cp, 8)
    check_blocks(cp, 8)
