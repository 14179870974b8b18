"""FlashMask (PaddlePaddle): per key column, the row intervals it masks.

``paddle.nn.functional.flashmask_attention(q, k, v, startend_row_indices, causal=...)`` takes an
int32 ``startend_row_indices`` of shape ``[B, Hk, S_k, 1|2|4]``; for key column ``k`` (Paddle's
docs and its ``flashmask_to_densemask`` reference, rows are queries):

- ``causal=True``, 1 value ``[LTS]``: rows ``>= LTS`` are masked, and rows ``< k`` by causality;
- ``causal=True``, 2 values ``[LTS, LTE]``: rows in ``[LTS, LTE)`` masked, and rows ``< k``;
- ``causal=False``, 2 values ``[LTS, UTE]``: rows ``>= LTS`` and rows ``< UTE`` masked;
- ``causal=False``, 4 values ``[LTS, LTE, UTS, UTE]``: rows in ``[LTS, LTE)`` and ``[UTS, UTE)``.

(Paddle's own sliding window, ``window_size=w`` with ``causal=True``, is ``LTS[k] = min(k + w + 1,
n)``: ``w + 1`` keys per query. Our ``causal & window(w)`` sees ``w`` keys: ``LTS[k] = min(k + w, n)``.)

``to_flashmask`` picks the fewest values that are exact for every KV head of the layer, from each
column's runs of allowed rows (``patternc.export.columns``, never an ``n x n`` grid): causal,
sliding windows, sinks, global tokens, prefix LM, chunks and documents fit; a pattern whose column
keeps more than three runs of allowed rows (strides, dilations, random blocks, token rows amid a
window...) is a ``PatternError`` naming the term of the expression that does not fit.

>>> fm = to_flashmask(patternc.compile("causal & (window(3) | sink(1))", n=6), 0)
>>> fm.causal, fm.startend_row_indices[0, 0, :, 0].tolist()
(True, [6, 4, 5, 6, 6, 6])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import PatternMeaningError
from patternc.export.columns import MAX_RUNS, ColumnRuns, column_runs
from patternc.export.convert import dense_size
from patternc.export.gqa import kv_patterns, query_heads
from patternc.export.terms import first_failing_term
from patternc.lang import ast, parse, unparse
from patternc.limits import DENSE_LIMIT, MAX_INDEX_BYTES, require
from patternc.stack import layer_spans
from patternc.version import __version__

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["FORMATS", "FlashMask", "flashmask_to_dense", "save_flashmask", "to_flashmask"]

# (causal, values), fewest values first; at a tie the causal form, whose kernel skips the upper
# triangle outright
FORMATS = ((True, 1), (True, 2), (False, 2), (False, 4))


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class FlashMask:
    """``flashmask_attention``'s mask for one layer: ``startend_row_indices`` (1, Hk, n, values)
    int32 and the ``causal`` flag to call it with; ``exact`` is False for a union of KV groups."""

    startend_row_indices: np.ndarray
    causal: bool
    exact: bool

    @property
    def values(self) -> int:
        return self.startend_row_indices.shape[-1]


def to_flashmask(cp: CompiledPattern, layer: int, union: bool = False) -> FlashMask:
    """FlashMask's ``startend_row_indices`` and ``causal`` for ``layer``, one row of values per KV
    head (``Stack.kv_heads``), in the fewest values exact for every KV head. A KV group whose query
    heads differ is refused unless ``union`` (then the group's union, not exact for its heads)."""
    patterns = kv_patterns(cp, layer, union)
    require(4 * 4 * len(patterns) * cp.n, MAX_INDEX_BYTES, f"bytes of FlashMask indices at n = {cp.n:,}",
            "export fewer KV heads or a shorter sequence")
    runs, by_node = [], {}
    for p in patterns:
        if p.node not in by_node:  # KV heads with one pattern share its runs
            found = by_node[p.node] = column_runs(p.node, p.layout)
            if found.over is not None or not any(_fits(found, fmt) is not None for fmt in FORMATS):
                raise _not_representable(cp, layer, p, found)
        runs.append(by_node[p.node])
    for fmt in FORMATS:  # the last form holds every column any form holds, so one always fits
        values = [_fits(found, fmt) for found in runs]
        if all(v is not None for v in values):
            indices = np.stack(values)[None].astype(np.int32)  # (1, Hk, n, values)
            return FlashMask(indices, fmt[0], all(p.exact for p in patterns))
    raise AssertionError("unreachable: every KV head fits the four-value form")


def _fits(runs: ColumnRuns, fmt: tuple[bool, int]) -> np.ndarray | None:
    """(n, values) int64 for ``fmt`` when it holds every column's runs exactly, else None."""
    causal, values = fmt
    count, (s0, s1, _), (e0, e1, _) = runs.count, runs.start.T, runs.end.T
    n = len(count)
    k = np.arange(n)
    if causal and (count > 0).any() and (s0[count > 0] < k[count > 0]).any():
        return None  # a causal call masks every row above the diagonal
    if causal and values == 1:  # allowed: [k, LTS)
        ok = (count == 0) | ((count == 1) & (s0 == k))
        return np.where(count == 0, k, e0)[:, None] if ok.all() else None
    if causal:  # masked within [k, n): one interval [LTS, LTE)
        from_diagonal = (count == 1) & (s0 == k)
        to_end = (count == 1) & (s0 > k) & (e0 == n)
        both = (count == 2) & (s0 == k) & (e1 == n)
        if not ((count == 0) | from_diagonal | to_end | both).all():
            return None
        lts = np.select([count == 0, from_diagonal, to_end], [k, e0, k], e0)
        lte = np.select([count == 0, from_diagonal, to_end], [n, n, s0], s1)
        return np.stack([lts, lte], axis=1)
    if values == 2:  # allowed: one interval [UTE, LTS)
        if (count > 1).any():
            return None
        return np.stack([np.where(count == 0, 0, e0), np.where(count == 0, 0, s0)], axis=1)
    # masked: at most two intervals, the complement of the runs; the lower one is [LTS, LTE)
    gaps = _gaps(count, runs.start, runs.end, n)  # (n, 4, 2)
    number = (gaps[..., 1] > gaps[..., 0]).sum(axis=1)
    if (number > 2).any():
        return None
    present = gaps[..., 1] > gaps[..., 0]
    order = np.argsort(~present, axis=1, kind="stable")  # present gaps first, in row order
    gaps = np.take_along_axis(gaps, order[..., None], axis=1)
    one, two = number == 1, number == 2
    lower_single = one & (gaps[:, 0, 0] >= k)  # a lone gap at or below the diagonal is the lower one
    lt = np.where((two | lower_single)[:, None], np.where(two[:, None], gaps[:, 1], gaps[:, 0]), n)
    ut = np.where((two | (one & ~lower_single))[:, None], gaps[:, 0], 0)
    return np.concatenate([lt, ut], axis=1)


def _gaps(count, start, end, n) -> np.ndarray:
    """(n, 4, 2): the masked intervals of each column: before the first run, between runs, after
    the last; empty intervals as [0, 0)."""
    r = np.arange(MAX_RUNS)[None, :]
    has = r < count[:, None]
    last_end = np.where(count > 0, np.take_along_axis(end, np.maximum(count - 1, 0)[:, None], 1)[:, 0], 0)
    before = np.stack([np.zeros_like(count), np.where(count > 0, start[:, 0], n)], axis=1)
    between = np.stack([end[:, :-1], start[:, 1:]], axis=-1) * (has[:, 1:, None])
    after = np.stack([np.where(count > 0, last_end, n), np.full_like(count, n)], axis=1)
    return np.concatenate([before[:, None], between, after[:, None]], axis=1)


def _not_representable(cp, layer, pattern, runs: ColumnRuns) -> PatternMeaningError:
    """The error for a KV head no form fits: the term to blame and a column that shows it."""
    if runs.over is not None:
        k = runs.over
    else:  # a column the widest form cannot hold: more than two masked intervals
        gaps = _gaps(runs.count, runs.start, runs.end, cp.n)
        k = int(np.argmax((gaps[..., 1] > gaps[..., 0]).sum(axis=1) > 2))
    heads = pattern.heads
    term = None
    for h in heads if not pattern.exact else heads[:1]:
        term = first_failing_term(cp, layer, h, lambda node, layout: not _representable(node, layout))
        if term is not None:
            break
    rows = np.arange(cp.n)
    column = pattern.node.predicate(rows, np.full_like(rows, k)).astype(np.int8)  # one column, n rows
    edges = np.flatnonzero(np.diff(np.concatenate(([0], column, [0])))).reshape(-1, 2)  # [start, end)
    shown = ", ".join(f"[{a}, {b})" for a, b in edges[:4]) + (", ..." if len(edges) > 4 else "")
    masked = len(edges) + 1 - (edges[0, 0] == 0 if len(edges) else 0) - \
        (edges[-1, 1] == cp.n if len(edges) else 0)
    if term is None:  # every head of the group fits alone: their union does not
        what = f"the union of the patterns of query heads {layer_spans(heads)}"
    elif term == unparse(tree := parse(cp.expression(layer, heads[0]))) and not isinstance(
            tree, ast.Primitive):
        what = f"{term} (none of its terms fails on its own)"
    else:
        what = f"the term {term}"
    return PatternMeaningError(
        f"layer {layer}, KV head {pattern.kv_head} ({query_heads(heads)}): FlashMask cannot express {what}: "
        f"key {k} is allowed for query rows {shown}, so its masked rows form {masked} intervals, and "
        "FlashMask masks at most two per key column; use the BlockMask or block CSR export")


def _representable(node, layout) -> bool:
    runs = column_runs(node, layout)
    return runs.over is None and any(_fits(runs, fmt) is not None for fmt in FORMATS)


def flashmask_to_dense(startend_row_indices: np.ndarray, causal: bool,
                       max_elements: int = DENSE_LIMIT) -> np.ndarray:
    """(B, H, n, n) bool, True where FlashMask attends, from ``startend_row_indices`` (B, H, n, V)
    as Paddle's documentation and its ``flashmask_to_densemask`` define it (module docstring).

    >>> flashmask_to_dense(np.array([[[[2], [3], [3]]]]), causal=True)[0, 0].astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [0, 1, 1]])
    """
    idx = np.asarray(startend_row_indices)
    if idx.ndim != 4 or idx.shape[-1] not in ((1, 2) if causal else (2, 4)):
        raise PatternMeaningError(f"startend_row_indices must be [B, H, n, {'1|2' if causal else '2|4'}] "
                                  f"with causal={causal}, got shape {idx.shape}")
    b, h, n, values = idx.shape
    dense_size((b, h, n, n), max_elements)
    q = np.arange(n)[:, None]  # (n, 1) rows
    col = idx[:, :, None, :, :].astype(np.int64)  # (B, H, 1, n, V)
    if causal:
        lte = col[..., 1] if values == 2 else n
        masked = ((q >= col[..., 0]) & (q < lte)) | (q < np.arange(n)[None, :])
    elif values == 2:
        masked = (q >= col[..., 0]) | (q < col[..., 1])
    else:
        masked = ((q >= col[..., 0]) & (q < col[..., 1])) | ((q >= col[..., 2]) & (q < col[..., 3]))
    return ~masked


def save_flashmask(cp: CompiledPattern, path, union: bool = False) -> None:
    """Write every layer's indices to a safetensors file: ``layer{l}.startend_row_indices``
    (1, Hk, n, values) int32, and metadata ``causal`` (a JSON list, one flag per layer), ``exact``,
    ``n``, ``layers``, ``heads``, ``kv_heads``."""
    import json

    from patternc.export.file import write

    masks = [to_flashmask(cp, l, union) for l in range(cp.layers)]  # all built before writing
    tensors = {f"layer{l}.startend_row_indices": m.startend_row_indices for l, m in enumerate(masks)}
    metadata = {"format": "patternc-flashmask", "patternc_version": __version__, "n": str(cp.n),
                "layers": str(cp.layers), "heads": str(cp.heads), "kv_heads": str(cp.stack.kv_heads),
                "causal": json.dumps([m.causal for m in masks]),
                "exact": json.dumps(all(m.exact for m in masks))}
    write(path, tensors, metadata)
