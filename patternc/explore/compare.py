"""This pattern beside dense multi-head attention and its KV-sharing variants (MQA, GQA).

Masks change which pairs are scored; MQA and GQA change how many key/value heads are cached. The
table therefore has, per row: the pairs scored (every pair of the envelope for dense attention,
the allowed pairs for the pattern), the pairs a block-sparse kernel computes (whole stored
blocks), the keys each KV head caches, the layers until every position has heard every position
it may (the mixing depth), and whether some token is heard directly by every query. FLOPs and
bytes follow on the page from the head dimension and element size the reader picks.

>>> cp = patternc.compile("causal & (window(128) | sink(1))", n=1024)
>>> mha, mqa, gqa, ours = comparison_rows(cp, patternc.reach(cp), cp.stats())
>>> mha.pairs, ours.pairs, ours.computed_pairs, ours.kv_keys  # a KV cache of 128 window keys + 1 sink
(524800, 123840, 344064, 129)
>>> ours.global_token
'yes: key 0, heard directly by every other query (layer 0, head 0)'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from patternc.compiled import CompiledPattern, PatternStats
from patternc.kv_analysis import kv
from patternc.layout import Layout
from patternc.lower.node import Lowered
from patternc.reachability import ReachReport

__all__ = ["AttentionRow", "comparison_rows", "dense_pairs", "global_key"]

SAMPLE_QUERIES = 33  # queries every candidate key is tried against before its full column
FULL_CHECKS = 64  # keys checked against every query per head before giving up


@dataclass(frozen=True, slots=True)
class AttentionRow:
    """One row of the comparison, for the whole stack (every layer and head)."""

    name: str
    kv_heads: int | None  # None: the page's GQA setting
    pairs: int  # pairs scored
    computed_pairs: int  # pairs inside the blocks a kernel computes
    kv_keys: int | None  # keys cached per KV head (the largest budget); None: every key (not causal)
    layers_to_mix: str
    global_token: str
    kv_layer_keys: tuple[int, ...] | None = None  # per layer, keys over its KV heads; None: kv_keys each

    def to_dict(self) -> dict:
        return asdict(self)


def dense_pairs(n: int, causal: bool) -> int:
    """Pairs dense attention scores in one head: the envelope."""
    return n * (n + 1) // 2 if causal else n * n


def _dense_computed(cp: CompiledPattern, causal: bool) -> int:
    """Pairs inside the blocks a block kernel computes for dense attention (causal: every block
    reaching the diagonal), per head."""
    grid = cp.grid
    if not causal:
        return cp.n * cp.n
    q0, q1 = grid.q_bounds(np.arange(grid.nbq, dtype=np.int64))
    last_key = np.minimum(((q1 - 1) // grid.bk + 1) * grid.bk, cp.n)  # end of the diagonal's key block
    return int(((q1 - q0) * last_key).sum())


def global_key(node: Lowered, layout: Layout, causal: bool) -> int | str | None:
    """The first key that every other query of its envelope attends in this head (a global token:
    sink, global, a dense head); None when there is none; ``"unknown"`` after ``FULL_CHECKS`` keys
    that passed the sampled queries but not the full column."""
    grid = layout.grid
    rows, cols = layout.rows(), layout.indices.astype(np.int64)
    # Candidates: key blocks stored in every block row after the one holding their last key (each
    # of those rows holds a later query of every key of the block).
    last = np.minimum((np.arange(grid.nbk) + 1) * grid.bk, grid.n) - 1
    start = np.minimum(last // grid.bq + 1, grid.nbq) if causal else np.zeros(grid.nbk, np.int64)
    stored = np.bincount(cols[rows >= start[cols]], minlength=grid.nbk)
    candidates = np.flatnonzero(stored == grid.nbq - start)
    sample = np.unique(np.linspace(0, grid.n - 1, SAMPLE_QUERIES).astype(np.int64))[:, None]
    checked = 0
    for j in candidates:
        k0, k1 = grid.k_bounds(j)
        keys = np.arange(k0, k1)[None, :]
        queries = np.maximum(sample, keys) if causal else sample
        for k in keys[0, (node.predicate(queries, keys) | (queries == keys)).all(axis=0)]:  # itself aside
            if checked == FULL_CHECKS:
                return "unknown"
            checked += 1
            others = np.arange(k + 1 if causal else 0, grid.n)  # every query that may hear k
            if node.predicate(others[others != k], np.int64(k)).all():
                return int(k)
    return None


def _mixing(report: ReachReport) -> str:
    if report.mixing_depth is not None:
        return f"{report.mixing_depth}" + ("" if report.exact else " (block bounds)")
    if report.never:
        return "never"
    low, high = report.mixing_depth_bounds
    if report.exact or low is None:
        return f"more than {report.max_depth}"
    return f"at least {low}" + (f", at most {high}" if high else "") + " (block bounds)"


def _global(cp: CompiledPattern, causal: bool) -> str:
    """Whether some token is heard directly by every other token (in one head of one layer)."""
    seen: dict[Lowered, int | str | None] = {}
    best: tuple[int, int, int] | None = None
    for l in range(cp.layers):
        for h in range(cp.heads):
            node = cp.node(l, h)
            if node not in seen:
                seen[node] = global_key(node, cp.layout(l, h), causal)
            if isinstance(seen[node], int) and (best is None or seen[node] < best[0]):
                best = (seen[node], l, h)
                if best[0] == 0:  # no key comes earlier
                    return f"yes: key 0, heard directly by every other query (layer {l}, head {h})"
    if best is not None and not causal:
        key, l, h = best
        return f"yes: key {key}, heard directly by every other query (layer {l}, head {h})"
    if any(key == "unknown" for key in seen.values()):
        return "not determined (too many candidate keys to check)"
    if best is None:
        return "no: no key is heard directly by every query that may hear it"
    key, l, h = best
    return (f"no: key 0 is not; the earliest key every later query hears directly is {key:,} "
            f"(by the last {cp.n - 1 - key:,}; layer {l}, head {h})")


def _kv_keys(cp: CompiledPattern, kv_heads: int | None) -> tuple[int | None, tuple[int, ...] | None]:
    """The largest KV-cache budget of any layer and KV head, and per layer the keys its KV heads
    cache together (``patternc.kv``: a hybrid stack's full and sliding layers differ); None when
    the stack is not causal (a bidirectional stack has no cache order: every key is kept)."""
    if not cp.causal:
        return None, None
    budgets = kv(cp, kv_heads=kv_heads).max_live_keys
    return max(max(row) for row in budgets), tuple(sum(row) for row in budgets)


def comparison_rows(cp: CompiledPattern, report: ReachReport, stats: PatternStats) -> list[AttentionRow]:
    """MHA, MQA, GQA and this pattern at ``cp.n``, for every layer and head of the stack
    (``stats`` is ``cp.stats()``, computed once by the caller)."""
    causal = report.causal
    heads = cp.layers * cp.heads
    dense = dense_pairs(cp.n, causal) * heads
    computed = _dense_computed(cp, causal) * heads
    per_head = stats.per_head
    every = "yes: every key, directly"
    kv_heads = getattr(cp.stack, "kv_heads", None)  # a stack that declares KV heads (GQA) caches those
    kv_keys, kv_layer_keys = _kv_keys(cp, kv_heads)
    return [
        AttentionRow("MHA (dense)", cp.heads, dense, computed, cp.n, "1", every),
        AttentionRow("MQA (dense, 1 KV head)", 1, dense, computed, cp.n, "1", every),
        AttentionRow("GQA (dense)", None, dense, computed, cp.n, "1", every),
        AttentionRow("this pattern", kv_heads or cp.heads, sum(s.allowed_pairs for s in per_head),
                     sum(s.stored_pairs for s in per_head), kv_keys, _mixing(report), _global(cp, causal),
                     kv_layer_keys),
    ]
