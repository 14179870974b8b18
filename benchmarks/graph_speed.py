"""Layered-graph speed: ``CompiledPattern.graph()`` of 12-layer stacks, tokens at n = 4,096 and
blocks of 128 at n = 1,048,576, or the refusal past ``MAX_GRAPH_EDGES``.

    python benchmarks/graph_speed.py

Each figure is the wall time of ``cp.graph()`` on an already compiled stack (networkx imported
before, as a user's script would have), the resident memory the graph holds (RSS while it is
alive, minus before), and the cyclic collector's first pass over the new objects afterwards (the
build turns the collector off: it would rescan them many times). For scale, the same graph built
edge by edge with networkx's ``add_edges_from``.
"""

from __future__ import annotations

import gc
import os
import platform
import time

import networkx as nx

import patternc
from patternc import Stack


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x {len(names)}"
    except (OSError, IndexError):
        return platform.processor() or "unknown CPU"


def measure(label: str, spec, n: int, **options) -> nx.DiGraph | None:
    cp = patternc.compile(spec, n=n, **options)
    gc.collect()
    before = rss()
    start = time.perf_counter()
    try:
        g = cp.graph()
    except patternc.PatternSizeError as err:
        seconds = time.perf_counter() - start
        print(f"{label:<44} {n:>9,} {'refused':>8} {seconds:>7.2f} s   {str(err)[:90]}...", flush=True)
        return None
    seconds = time.perf_counter() - start
    held = rss() - before
    start = time.perf_counter()
    gc.collect()
    collect = time.perf_counter() - start
    mode = "tokens" if g.graph["unit"] == 1 else f"b{g.graph['unit']}"
    print(f"{label:<44} {n:>9,} {mode:>8} {seconds:>7.2f} s {g.number_of_nodes():>9,} nodes "
          f"{g.number_of_edges():>10,} edges {held / 2**20:>6.0f} MiB  (gc pass {collect:.2f} s)", flush=True)
    return g


def by_edges(g: nx.DiGraph) -> float:
    """Seconds to build ``g`` again through networkx's public ``add_edges_from``."""
    edges = [(u, v, dict(d)) for u, v, d in g.edges(data=True)]
    start = time.perf_counter()
    again = nx.DiGraph()
    again.add_nodes_from(g.nodes(data=True))
    again.add_edges_from(edges)
    return time.perf_counter() - start


def main() -> None:
    print(f"CPU: {cpu()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'stack (12 layers)':<44} {'n':>9} {'mode':>8} {'time':>9}")
    small = measure("window 32 | 4 sinks, 8 heads", Stack("causal & (window(32) | sink(4))", layers=12,
                                                           heads=8), 4096)
    measure("StreamingLLM conf, w = 64", "conf/pattern/streaming_llm.yaml", 4096, params={"w": 64})
    measure("MInference vertical-slash conf", "conf/pattern/minference_vertical_slash.yaml", 4096)
    measure("Sparse Transformer strided conf", "conf/pattern/sparse_transformer_strided.yaml", 4096)
    measure("Longformer conf", "conf/pattern/longformer.yaml", 4096)
    measure("Longformer conf", "conf/pattern/longformer.yaml", 2**20)
    measure("BigBird conf (random blocks of 64)", "conf/pattern/bigbird.yaml", 2**20)
    measure("StreamingLLM conf, w = 4,096", "conf/pattern/streaming_llm.yaml", 2**20, params={"w": 4096})
    measure("Sparse Transformer strided conf", "conf/pattern/sparse_transformer_strided.yaml", 2**20)
    if small is not None:
        print(f"the first graph again through add_edges_from: {by_edges(small):.2f} s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
