"""Which stacks a serving configuration can express, layer by layer, and the smallest one that holds
a stack it cannot.

A head is classified by what it allows, not by how it is written: from the compiled layout, each
key column's rows (``patternc.export.columns``, never an ``n x n`` grid) must be one run from the
diagonal down to ``end(k)``, and

- full: ``end(k) = n`` for every key;
- sliding, window ``w`` with ``s`` sinks: ``end(k) = n`` for ``k < s``, ``min(k + w, n)`` after;
- chunked, chunk ``c``: ``end(k) = min((k // c + 1) * c, n)``.

So ``band(0, 63)`` is a window of 64 as ``causal & window(64)`` is, and a window of ``n`` or more is
full attention at that ``n``. Each target takes some of these (``TARGETS``): Hugging Face configs
one ``sliding_window`` and one ``attention_chunk_size`` for the whole model and no sinks;
TensorRT-LLM a window per layer and one ``sink_token_length`` for all, and no chunks. Every head of
a layer must be alike. Anything else is refused naming the layer, head and term, unless a superset
is asked for: per layer the narrowest window (with the target's sinks) that holds every pair its
heads allow, or full attention; for one window shared by all layers, the one that keeps fewest
pairs. A superset keeps more keys than the stack, never fewer.

>>> cp = patternc.compile(patternc.Stack("causal & window(64)", layers=2, heads=2,
...      overrides=(patternc.Override("causal & (window(32) | sink(4))", layers=(1, 2)),)), n=1024)
>>> [str(layer) for layer in native_layers(cp, "trtllm", superset=True)]
['causal & (sink(4) | window(64))', 'causal & (sink(4) | window(32))']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import ConfigError
from patternc.export.columns import column_runs
from patternc.export.terms import first_failing_term
from patternc.kv_analysis import last_reads
from patternc.layout import Layout, future_pair
from patternc.lower.algebra import Intersect
from patternc.lower.rules import simplify
from patternc.native.layers import LayerAttention
from patternc.primitives.offsets import Band

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.lower.node import Lowered

__all__ = ["TARGETS", "Target", "classify", "classify_layers", "native_layers"]


@dataclass(frozen=True, slots=True)
class Target:
    """What a serving configuration expresses per layer (every head of a layer alike)."""

    name: str
    kinds: tuple[str, ...]  # the layer kinds it takes
    sinks: bool  # sliding layers may keep sinks: one count for every sliding layer
    one_window: bool  # one window (and one chunk) for the whole model
    family: str  # the family in words, for messages


TARGETS = {
    "hf-config": Target("hf-config", ("full", "sliding", "chunked"), sinks=False, one_window=True,
                        family="per layer full, sliding with the model's one sliding_window, or chunked "
                               "with its one attention_chunk_size; no sinks"),
    "trtllm": Target("trtllm", ("full", "sliding"), sinks=True, one_window=False,
                     family="per layer full or sliding (a window per layer), one sink_token_length for "
                            "every sliding layer; no chunks"),
}


def classify(node: Lowered, layout: Layout) -> LayerAttention | None:
    """The serving kind of one head, or None when it is none of them (see the module docstring).

    >>> cp = patternc.compile("band(0, 63)", n=512)
    >>> classify(cp.node(), cp.layout())
    LayerAttention(kind='sliding', size=64, sinks=0)
    """
    n = layout.grid.n
    runs = column_runs(node, layout, max_runs=1)
    k = np.arange(n)
    if runs.over is not None or (runs.count != 1).any() or (runs.start[:, 0] != k).any():
        return None
    end = runs.end[:, 0]
    short = np.flatnonzero(end < n)
    if len(short) == 0:
        return LayerAttention("full")
    s = int(short[0])
    w = int(end[s]) - s
    if (end[s:] == np.minimum(k[s:] + w, n)).all():
        return LayerAttention("sliding", w, s)
    c = int(end[0])
    if s == 0 and (end == np.minimum((k // c + 1) * c, n)).all():
        return LayerAttention("chunked", c)
    return None


def _sinks_only(node: Lowered, layout: Layout) -> bool:
    """The causal part of a term is the first few keys for every query (a ``sink``)."""
    n = layout.grid.n
    runs = column_runs(node, layout, max_runs=1)
    if runs.over is not None:
        return False
    s = int(np.argmin(runs.count)) if (runs.count == 0).any() else n
    k = np.arange(s)
    return bool((runs.count[s:] == 0).all() and (runs.count[:s] == 1).all()
                and (runs.start[:s, 0] == k).all() and (runs.end[:s, 0] == n).all())


def classify_layers(cp: CompiledPattern) -> list[LayerAttention | None]:
    """Per layer, the kind every head shares, or None (a head of no kind, or heads that differ)."""
    found: dict[Lowered, LayerAttention | None] = {}
    out = []
    for l in range(cp.layers):
        kinds = set()
        for h in range(cp.heads):
            node = cp.node(l, h)
            if node not in found:
                found[node] = classify(node, cp.layout(l, h))
            kinds.add(found[node])
        out.append(kinds.pop() if len(kinds) == 1 else None)
    return out


def native_layers(cp: CompiledPattern, target: str = "hf-config", superset: bool = False
                  ) -> tuple[LayerAttention, ...]:
    """Each layer of ``cp`` as ``target`` (a key of ``TARGETS``) expresses it; a ``ConfigError``
    naming the layer, head and term it cannot, or with ``superset`` the smallest superset it can."""
    t = TARGETS[target]
    if cp.first_query:
        raise ConfigError(f"{target} describes every query: compile the stack without first_query")
    for l in range(cp.layers):
        for h in range(cp.heads):
            if (pair := future_pair(cp.node(l, h), cp.layout(l, h))) is not None:
                raise ConfigError(f"layer {l}, head {h}: {cp.expression(l, h)} lets query {pair[0]} read the "
                                  f"later key {pair[1]}: a decoder's configuration has no such layer")
    exact = classify_layers(cp)
    if superset:
        return _superset(cp, t, exact)
    for l, layer in enumerate(exact):
        if layer is None or not _takes(t, layer):
            _refuse_layer(cp, t, l)
    _check_shared(t, exact)
    return tuple(exact)


def _takes(t: Target, layer: LayerAttention) -> bool:
    return layer.kind in t.kinds and (t.sinks or not layer.sinks)


def _refuse_layer(cp: CompiledPattern, t: Target, l: int) -> None:
    kinds = [classify(cp.node(l, h), cp.layout(l, h)) for h in range(cp.heads)]
    for h, kind in enumerate(kinds):
        if kind is None or not _takes(t, kind):
            term = first_failing_term(cp, l, h, lambda node, layout: not _term_fits(t, node, layout))
            raise ConfigError(f"layer {l}, head {h}: {term} in {cp.expression(l, h)} is not expressible by "
                              f"{t.name} ({t.family}); ask for the smallest superset (--superset, "
                              "superset=True)")
    h = next(h for h in range(cp.heads) if kinds[h] != kinds[0])
    raise ConfigError(f"layer {l}: head {h} is {kinds[h].describe()} ({cp.expression(l, h)}) but head 0 is "
                      f"{kinds[0].describe()} ({cp.expression(l, 0)}): {t.name} gives every head of a layer "
                      "one attention; ask for the smallest superset (--superset, superset=True)")


def _term_fits(t: Target, node: Lowered, layout: Layout) -> bool:
    """A term of an expression, under ``causal``, is one the target takes (or, where it takes sinks,
    the sinks themselves)."""
    grid = layout.grid
    causal = simplify(Intersect(Band(0, grid.n - 1), node))
    below = Layout.from_blocks(causal.enumerate(grid), grid)
    kind = classify(causal, below)
    return (kind is not None and _takes(t, kind)) or (t.sinks and _sinks_only(causal, below))


def _check_shared(t: Target, layers: list[LayerAttention]) -> None:
    """What the target holds once for the whole model: its window and chunk, or its sink count."""
    keys = (("sliding", "size", "sliding_window"), ("chunked", "size", "attention_chunk_size")) \
        if t.one_window else (("sliding", "sinks", "sink_token_length"),)
    for kind, field, key in keys:
        first = next((l for l, layer in enumerate(layers) if layer.kind == kind), None)
        for l, layer in enumerate(layers):
            if layer.kind == kind and getattr(layer, field) != getattr(layers[first], field):
                raise ConfigError(f"layer {l} is {layer.describe()} but layer {first} is "
                                  f"{layers[first].describe()}: {t.name} has one {key} for every layer; ask "
                                  "for the smallest superset (--superset, superset=True)")


def _superset(cp: CompiledPattern, t: Target, exact: list[LayerAttention | None]
              ) -> tuple[LayerAttention, ...]:
    n = cp.n
    sinks = max((layer.sinks for layer in exact if layer is not None and layer.kind == "sliding"), default=0)
    sinks = sinks if t.sinks else 0
    chunks = {layer.size for layer in exact if layer is not None and layer.kind == "chunked"}
    keep_chunks = "chunked" in t.kinds and len(chunks) == 1
    need = []  # per layer: the kept layer, or the window it needs with `sinks` sinks (n: full)
    for l, layer in enumerate(exact):
        if layer is not None and (layer.kind == "full" or (layer.kind == "chunked" and keep_chunks)):
            need.append(layer)
        else:
            need.append(_window_needed(cp, l, sinks))
    if not t.one_window:
        return tuple(x if isinstance(x, LayerAttention) else _sliding(x, sinks, n) for x in need)
    windows = sorted({x for x in need if isinstance(x, int) and x < n})

    def layers_with(w: int | None) -> list[LayerAttention]:
        return [x if isinstance(x, LayerAttention) else
                _sliding(w, 0, n) if w is not None and x <= w else LayerAttention("full") for x in need]

    # one window for every layer: the candidate that keeps the fewest pairs (ties: the narrowest)
    best = min([None, *windows], key=lambda w: (sum(x.pairs(n) for x in layers_with(w)), w or n))
    return tuple(layers_with(best))


def _window_needed(cp: CompiledPattern, l: int, sinks: int) -> int:
    """The narrowest window that, with ``sinks`` sinks, holds every pair layer ``l``'s heads allow."""
    heads = {cp.node(l, h): h for h in range(cp.heads)}  # heads with one pattern: one last_reads
    last = np.maximum.reduce([last_reads(node, cp.layout(l, h)) for node, h in heads.items()])
    k = np.arange(cp.n)
    read = (last >= k) & (k >= sinks)
    return int((last[read] - k[read]).max()) + 1 if read.any() else 1


def _sliding(w: int, sinks: int, n: int) -> LayerAttention:
    # every query q sees the keys after q - w and the first `sinks`: all of them once w >= n - sinks
    return LayerAttention("full") if w >= n - sinks else LayerAttention("sliding", w, sinks)
