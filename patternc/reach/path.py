"""The path that comes closest: where information from an unreachable key does get to.

On the layered block graph (node ``(t, X)``: block X after layer t; an edge ``(t-1, J) -> (t, Q)``
when layer t stores block (Q, J), plus the residual ``(t-1, Q) -> (t, Q)``), we follow what key
``k``'s block reaches through the stack and report a path to the reached block nearest the query.
Blocks over-approximate tokens, so the path shows how far information can get, not a proof.
"""

from __future__ import annotations

from patternc.lower.grid import Grid
from patternc.reach.layers import LayerFlow

__all__ = ["MAX_GRAPH_EDGES", "closest_path"]

MAX_GRAPH_EDGES = 2_000_000  # beyond this the graph would take gigabytes in networkx: no path


def closest_path(flows: list[LayerFlow], grid: Grid, pair: tuple[int, int],
                 ) -> tuple[tuple[int, int, int], ...] | None:
    """``((layer, first token, last token), ...)`` from ``k``'s block at layer 0 to the block
    nearest ``q``'s that it reaches at the stack's depth; None when the graph is too large."""
    import networkx as nx  # only here: importing patternc stays light

    q, k = pair
    nb, depth = grid.nbq, len(flows)
    if sum(len(f.blocks) for f in flows) + depth * nb > MAX_GRAPH_EDGES:
        return None
    graph = nx.DiGraph()
    for t, flow in enumerate(flows, start=1):
        graph.add_edges_from(zip(((t - 1, int(j)) for j in flow.blocks.cols),
                                 ((t, int(i)) for i in flow.blocks.rows), strict=True))
        graph.add_edges_from(((t - 1, x), (t, x)) for x in range(nb))
    source, target_block = (0, k // grid.bk), q // grid.bq
    reached = [x for t, x in nx.descendants(graph, source) if t == depth]
    nearest = min(reached, key=lambda x: (abs(x - target_block), x))
    path = nx.shortest_path(graph, source, (depth, nearest))
    return tuple((t, x * grid.bq, min((x + 1) * grid.bq, grid.n) - 1) for t, x in path)
