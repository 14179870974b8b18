"""What an explorer page holds: every figure and array the page draws, computed here, in Python.

Per distinct head layout (heads with the same bound pattern share one):

- an *overview*: the blocks counted into at most ``OVERVIEW_CELLS`` cells a side (stored and FULL
  blocks per cell, and which union terms store a block there), always present;
- a *detail*: the exact layout as runs of equal-kind blocks per block row, the token predicate of
  the head and of each term (``evaluator.py``), present while the page stays within its budget
  (the head the page opens on first). With it the page zooms to blocks and tokens, exactly.

Sizes are bounded whatever ``n``: overviews shrink (halving their cells) until they fit
``OVERVIEW_BUDGET``, details are kept in order until ``DETAIL_BUDGET`` is spent, and the spread of
``SPREAD_KEYS`` followed keys is counted into ``SPREAD_CELLS`` cells.

>>> data = page_data(patternc.compile("conf/pattern/longformer.yaml", n=1024))
>>> [term["label"] for term in data["layouts"][0]["terms"]]
['window(256)', 'global(16)']
"""

from __future__ import annotations

import json

import numpy as np

from patternc.compiled import CompiledPattern, PatternStats
from patternc.draw import cell_counts
from patternc.explore.compare import comparison_rows
from patternc.explore.encode import packed, smallest_unsigned
from patternc.explore.evaluator import predicate_tree
from patternc.explore.terms import head_terms
from patternc.layout import Layout
from patternc.lower.grid import FULL
from patternc.lower.node import Lowered
from patternc.reachability import EXACT_LIMIT, ReachReport, reach
from patternc.reachability.path import KeySpread
from patternc.stack import layer_spans

__all__ = ["DETAIL_BUDGET", "OVERVIEW_BUDGET", "OVERVIEW_CELLS", "SPREAD_CELLS", "SPREAD_KEYS", "page_data"]

OVERVIEW_CELLS = 512  # cells a side of a head's overview, at most (the canvas is 640 pixels wide)
MIN_OVERVIEW_CELLS = 32
OVERVIEW_SAMPLE = 8  # heads whose overview sizes choose the cell count for all
OVERVIEW_BUDGET = 2_000_000  # bytes of overview data in one page, all heads together
DETAIL_BUDGET = 1_600_000  # bytes of exact layouts and predicates in one page
SPREAD_KEYS = 63  # evenly spaced keys followed through the layers, plus the unreachable pair's key
SPREAD_CELLS = 512  # positions of the receptive-field picture


def _size(item) -> int:
    return len(json.dumps(item, separators=(",", ":")))


def _runs(layout: Layout) -> dict:
    """The layout as runs of consecutive blocks of one kind in a block row: ``row_ptr`` (nbq + 1),
    and per run its first column, length and kind (1 PARTIAL, 2 FULL)."""
    rows, cols, full = layout.rows(), layout.indices.astype(np.int64), layout.full
    starts = np.ones(len(cols), bool)
    starts[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1) | (full[1:] != full[:-1])
    first = np.flatnonzero(starts)
    lengths = np.diff(np.append(first, len(cols)))
    row_ptr = np.zeros(layout.grid.nbq + 1, np.int64)
    np.cumsum(np.bincount(rows[first], minlength=layout.grid.nbq), out=row_ptr[1:])
    return {"row_ptr": packed(row_ptr.astype(np.int32)), "col": packed(cols[first].astype(np.int32)),
            "length": packed(lengths.astype(np.int32)),
            "kind": packed(np.where(full[first], FULL, 1).astype(np.uint8))}


def _overview(layout: Layout, term_blocks: list[tuple | None], cells: int) -> dict:
    """Blocks counted per cell: stored, FULL, and a bit per term that stores a block there."""
    full, stored, area, (ci, cj) = cell_counts(layout, cells)
    dtype = smallest_unsigned(int(area.max()))
    bits = np.zeros(stored.shape, np.uint16)
    for t, blocks in enumerate(term_blocks):
        held = stored if blocks is None else cell_counts(layout, cells, blocks)[1]
        bits |= np.where(held > 0, np.uint16(1 << t), np.uint16(0))
    return {"rows": int(stored.shape[0]), "cols": int(stored.shape[1]), "ci": ci, "cj": cj,
            "stored": packed(stored.astype(dtype)), "full": packed(full.astype(dtype)),
            "terms": packed(bits.astype(np.uint8 if len(term_blocks) <= 8 else np.uint16))}


class _Head:
    """One distinct layout: where it first appears, its terms and its term blocks."""

    def __init__(self, cp: CompiledPattern, layer: int, head: int) -> None:
        self.layer, self.head = layer, head
        self.node: Lowered = cp.node(layer, head)
        self.layout = cp.layout(layer, head)
        self.terms = head_terms(cp, layer, head)
        self.term_blocks = []  # None where the term is the whole head: its blocks are the layout's
        for term in self.terms:
            if term.node == self.node:
                self.term_blocks.append(None)
            else:
                b = term.node.enumerate(cp.grid)
                self.term_blocks.append((b.rows, b.cols, b.kinds == FULL))

    def detail(self) -> dict:
        return {"runs": _runs(self.layout), "predicate": predicate_tree(self.node),
                "terms": [predicate_tree(term.node) for term in self.terms]}


def _overviews(heads: list[_Head], order: list[int], nb: int) -> tuple[list[dict | None], int]:
    """Overviews of every head at the finest cell count that fits ``OVERVIEW_BUDGET``, chosen from
    the sizes of the first few heads (the size of an overview grows with its cells)."""
    cells = min(OVERVIEW_CELLS, nb)
    sample = [heads[i] for i in order[:OVERVIEW_SAMPLE]]
    while cells > MIN_OVERVIEW_CELLS:
        each = max(_size(_overview(h.layout, h.term_blocks, cells)) for h in sample)
        if each * len(heads) <= OVERVIEW_BUDGET:
            break
        cells //= 2
    while True:
        views = [_overview(h.layout, h.term_blocks, cells) for h in heads]
        if sum(map(_size, views)) <= OVERVIEW_BUDGET or cells <= MIN_OVERVIEW_CELLS:
            break
        cells //= 2  # the sample was lighter than the rest
    kept, used = [None] * len(heads), 0
    for i in order:  # at the coarsest size and still too many heads: the first ones that fit
        if used + _size(views[i]) > OVERVIEW_BUDGET:
            break
        kept[i], used = views[i], used + _size(views[i])
    return kept, cells


def _details(heads: list[_Head], order: list[int]) -> list[dict | None]:
    """Details while they fit ``DETAIL_BUDGET``, the opening head first."""
    kept, used = [None] * len(heads), 0
    for i in order:
        detail = heads[i].detail()
        if used + _size(detail) > DETAIL_BUDGET:
            break
        kept[i], used = detail, used + _size(detail)
    return kept


def _spread_keys(n: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, min(SPREAD_KEYS, n)).round().astype(int).tolist()))


def _spread(spread: KeySpread) -> dict:
    """Per layer and key, the share of each cell's tokens that (certainly, possibly) heard it."""
    positions = spread.certain.shape[1]
    per_cell = -(-positions // SPREAD_CELLS)
    cells = -(-positions // per_cell)
    sizes = np.minimum(spread.unit, spread.n - np.arange(positions) * spread.unit)  # tokens per position
    pad = cells * per_cell - positions
    cell_tokens = np.pad(sizes, (0, pad)).reshape(cells, per_cell).sum(axis=1)
    planes = []
    for bound in (0, 1):
        plane = np.zeros((spread.layers + 1, len(spread.keys), cells), np.uint8)
        for t in range(spread.layers + 1):
            for s in range(len(spread.keys)):
                reached = spread.reached(t, s)[bound]
                tokens = np.pad(np.where(reached, sizes, 0), (0, pad)).reshape(cells, per_cell).sum(axis=1)
                share = tokens / cell_tokens
                plane[t, s] = np.where(share > 0, np.maximum(1, np.rint(share * 255)), 0)
        planes.append(plane)
    envelope = [spread.n - k if spread.causal else spread.n for k in spread.keys]
    return {"keys": list(spread.keys), "exact": spread.exact, "unit": spread.unit, "cells": cells,
            "cell_tokens": per_cell * spread.unit, "envelope": envelope,
            "tokens": [spread.tokens(t) for t in range(spread.layers + 1)],
            "certain": packed(planes[0]), "possible": None if spread.exact else packed(planes[1])}


def _reach_summary(report: ReachReport) -> dict:
    data = report.to_dict()
    keep = ("exact", "block", "mixing_depth", "mixing_depth_bounds", "never", "max_depth", "covered",
            "covered_bounds", "growth", "unreachable", "closest_path", "closest_path_exact", "errors",
            "empty_rows")
    return {key: data[key] for key in keep}


def page_data(cp: CompiledPattern, layer: int = 0, head: int = 0, title: str | None = None,
              exact_limit: int = EXACT_LIMIT) -> dict:
    """Everything the explorer page shows, as JSON-ready data; it opens on (``layer``, ``head``)."""
    cp.node(layer, head)  # the head must exist (PatternSizeError otherwise)
    index: dict[Lowered, int] = {}
    heads: list[_Head] = []
    table = [[0] * cp.heads for _ in range(cp.layers)]
    for l in range(cp.layers):
        for h in range(cp.heads):
            node = cp.node(l, h)
            if node not in index:
                index[node] = len(heads)
                heads.append(_Head(cp, l, h))
            table[l][h] = index[node]
    chosen = table[layer][head]
    order = [chosen] + [i for i in range(len(heads)) if i != chosen]
    overviews, cells = _overviews(heads, order, max(cp.grid.nbq, cp.grid.nbk))
    details = _details(heads, order)
    stats: PatternStats = cp.stats()
    first_stats = {(s.layer, s.head): s for s in stats.per_head}
    # Above the exact limit the bounds are followed through the stack's own depth only: deeper
    # runs cost as much again and the page draws the stack's layers (patternc check looks further).
    max_depth = None if cp.n <= exact_limit else cp.layers
    report = reach(cp, exact_limit=exact_limit, max_depth=max_depth, keys=_spread_keys(cp.n))
    expressions = sorted({cp.expression(l, h) for l in range(cp.layers) for h in range(cp.heads)})
    compare = comparison_rows(cp, report, stats)
    return {
        "format": "patternc-explorer", "version": 1,
        "title": title or cp.stack.source or cp.expression(0, 0),
        "description": cp.stack.description,
        "n": cp.n, "block": list(cp.block), "layers": cp.layers, "heads": cp.heads, "causal": report.causal,
        "start": [layer, head], "overview_cells": cells,
        "expressions": expressions,
        "head_expression": [[expressions.index(cp.expression(l, h)) for h in range(cp.heads)]
                            for l in range(cp.layers)],
        "head_layout": table,
        "layouts": [{
            "first": [h.layer, h.head],
            "stats": first_stats[(h.layer, h.head)].to_dict(),
            "terms": [{"label": t.label, "text": t.text} for t in h.terms],
            "overview": overview, "detail": detail,
        } for h, overview, detail in zip(heads, overviews, details, strict=True)],
        "warnings": list(stats.warnings),
        "reach": _reach_summary(report),
        "spread": _spread(report.spread),
        "compare": [row.to_dict() for row in compare],
        "kv_layers": _kv_layers(compare[-1]),
        "defaults": {"head_dim": 64, "bytes": 2, "kv_heads": _gqa_default(cp.heads, cp.stack.kv_heads)},
    }


def _kv_layers(row) -> list[dict]:
    """The pattern's KV cache by layer: runs of layers that cache as many keys (over their KV heads),
    so that a hybrid stack's full and sliding layers show apart."""
    if row.kv_layer_keys is None:
        return []
    groups: dict[int, list[int]] = {}
    for l, keys in enumerate(row.kv_layer_keys):
        groups.setdefault(keys, []).append(l)
    return [{"layers": layer_spans(layers), "keys": keys} for keys, layers in groups.items()]


def _gqa_default(heads: int, declared: int) -> int:
    """KV heads for the GQA row: the stack's own where it declares grouped-query attention, else a
    quarter of the query heads where that divides, as Llama-style models group them; the reader can
    change it on the page."""
    if declared != heads:
        return declared
    return next(g for g in (heads // 4, heads // 2, 1) if g >= 1 and heads % g == 0)
