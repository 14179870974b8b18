"""``reach``: does a stack still let every position hear from every position it should?

>>> report = reach(compile("conf/pattern/sparse_transformer_strided.yaml", n=4096))
>>> report.mixing_depth, report.covered_fraction
(2, 1.0)

In layer l, ``q`` hears from ``k`` when some head allows ``(q, k)``; the residual stream keeps what a
position already holds. The envelope is what a dense stack of the same causality reaches (``k <= q``
for a causal stack, every pair otherwise). Up to ``exact_limit`` tokens the analysis is exact, bit
by bit; beyond, it gives sound block-level bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from patternc.compiled import CompiledPattern, compile, whole_pattern
from patternc.errors import PatternSizeError, check_int
from patternc.export.gqa import KVGroupMismatch, mixed_kv_groups
from patternc.limits import MAX_REACH_BYTES, require
from patternc.lower.grid import Grid
from patternc.reachability.bits import prefix_mask, words
from patternc.reachability.bounds import run_lower, run_upper
from patternc.reachability.exact import run_exact
from patternc.reachability.findings import empty_rows
from patternc.reachability.layers import LayerFlow, coarsen, drawn_on_blocks, layer_flows
from patternc.reachability.path import KeySpread, closest_path, spread_blocks, spread_tokens, token_path

__all__ = ["EXACT_LIMIT", "ReachReport", "check_size", "reach"]

EXACT_LIMIT = 8192  # tokens; the exact state takes n^2 / 8 bytes (8 MiB here, 128 MiB at 32k)
EXACT_BLOCK = 16  # block of the exact run: small, so most pairs travel through FULL blocks
MAX_EMPTY_LISTED = 20
STATES = 4  # reach states alive at once (state, next state, envelope, a layer's gather)


@dataclass(frozen=True, slots=True)
class ReachReport:
    """What a stack lets through, layer by layer.

    ``covered_fraction`` is exact when ``exact``, else a certified lower bound (``covered_bounds``
    gives both bounds). ``mixing_depth`` is the depth at which the stack (repeated past its own
    depth if need be) covers its envelope: exact when ``exact``; else known only when the bounds
    meet (``mixing_depth_bounds``). ``never`` says it provably never does.
    """

    n: int
    block: tuple[int, int]
    layers: int
    heads: int
    causal: bool
    exact: bool
    mixing_depth: int | None
    mixing_depth_bounds: tuple[int | None, int | None]
    never: bool
    max_depth: int  # layers run (the stack repeated) looking for the mixing depth
    covered_fraction: float
    covered_bounds: tuple[float, float]
    growth: tuple[tuple[float, float], ...]  # (lower, upper) covered fraction after each layer
    unreachable: tuple[int, int] | None  # an envelope pair (q, k) not covered at the stack's depth
    # (layer, first, last token) from k on: single tokens, a real path, when closest_path_exact;
    # else block ranges of the block graph, which may hold tokens that never heard k
    closest_path: tuple[tuple[int, int, int], ...] | None
    closest_path_exact: bool
    empty_rows: tuple[tuple[int, int, int], ...]  # (layer, head, q), the first few
    empty_row_count: int
    spread: KeySpread | None = field(default=None, compare=False)  # the keys asked for, followed
    # KV heads (grouped-query attention) read by query heads whose patterns differ
    kv_mismatches: tuple[KVGroupMismatch, ...] = ()

    @property
    def covered(self) -> bool:
        """The envelope is certainly covered at the stack's own depth."""
        return self.covered_bounds[0] == 1.0

    @property
    def errors(self) -> list[str]:
        """Error-level findings: rows with no key (a stack declared causal that is not is refused by
        ``compile`` already)."""
        found = []
        if self.empty_row_count:
            layer, head, q = self.empty_rows[0]
            found.append(f"{self.empty_row_count} query rows attend no key (softmax is undefined "
                         f"there), e.g. layer {layer} head {head} query {q}")
        return found

    @property
    def warnings(self) -> list[str]:
        """Warning-level findings: KV groups whose query heads differ, which exports that take one
        layout per KV head (FlashInfer's variable wrapper, FlashMask) refuse without a union."""
        return [f"{m.describe()}; exports per KV head need one pattern per group (or --union, not exact)"
                for m in self.kv_mismatches]

    def to_dict(self) -> dict:
        """JSON-ready: ``empty_rows`` is the count, ``empty_row_examples`` the first few; a spread
        is given as the (certain, possible) token counts of each key after each layer."""
        data = asdict(replace(self, spread=None, kv_mismatches=()))
        if self.spread is not None:
            data["spread"] = {"keys": list(self.spread.keys), "exact": self.spread.exact,
                              "tokens": [self.spread.tokens(t) for t in range(self.spread.layers + 1)]}
        data["empty_row_examples"] = data.pop("empty_rows")
        data["empty_rows"] = data.pop("empty_row_count")
        data["covered"] = self.covered
        data["errors"] = self.errors
        data["kv_mismatches"] = [m.to_dict() for m in self.kv_mismatches]
        data["warnings"] = self.warnings
        return data


def reach(compiled: CompiledPattern, exact_limit: int = EXACT_LIMIT, max_depth: int | None = None,
          keys: Sequence[int] = ()) -> ReachReport:
    """Reachability of a compiled stack across its layers.

    ``exact_limit``: largest ``n`` analysed token by token. ``max_depth``: how many layers to run
    (the stack repeated) when looking for the mixing depth; default ``max(2 * layers, 8)``.
    ``keys``: positions to follow through the stack's layers (``ReachReport.spread``); when any
    are given, the key of the unreachable pair is followed too, to show where it does get.
    """
    cp = whole_pattern(compiled, "reach()", "follows whole sequences through the layers")
    check_size(cp.n, cp.block, exact_limit, max_depth)
    max_depth = max(2 * cp.layers, 8) if max_depth is None else max_depth
    keys = [int(k) for k in keys]
    if any(not 0 <= k < cp.n for k in keys):
        raise PatternSizeError(f"keys to follow must lie in [0, {cp.n}), got {min(keys)}..{max(keys)}")
    causal = cp.causal
    exact = cp.n <= exact_limit
    # random() is drawn on cp's own blocks: such a stack is analysed on them, never recompiled.
    own = layer_flows(cp, causal) if drawn_on_blocks(cp) else None
    block = max(cp.block) if own is None else math.lcm(*cp.block)  # square, for graph and bounds
    empty, empty_count = _empty_rows(cp)
    if exact:
        flows, grid = _exact_flows(cp, block, causal, own)
        run = run_exact(flows, grid, causal, max_depth)
        growth = tuple((g, g) for g in run.growth)
        depth_bounds = (run.mixing_depth, run.mixing_depth) if run.mixing_depth else (None, None)
        unreachable = _missing_pair(run.state, run.envelope, cp.n)
        mixing, never = run.mixing_depth, run.never
        path = token_path(flows, grid, unreachable, causal) if unreachable else None
        spread = spread_tokens(flows, grid, _followed(keys, unreachable), causal) if keys else None
    else:
        flows, grid = _square_flows(cp, block, causal, own)
        low = run_lower(flows, grid, causal, max_depth)
        high = run_upper(*_upper_flows(cp, block, causal, own), causal, max_depth)
        growth = tuple(zip(low.growth, high.growth, strict=True))
        depth_bounds = (high.depth, low.depth)
        mixing = low.depth if low.depth is not None and low.depth == high.depth else None
        never = high.stalled
        unreachable = _missing_block_pair(high.state, high.grid, causal)
        path = closest_path(flows, grid, unreachable, causal) if unreachable else None
        spread = spread_blocks(flows, grid, _followed(keys, unreachable), causal) if keys else None
    lower, upper = growth[-1]
    return ReachReport(
        n=cp.n, block=(block, block), layers=cp.layers, heads=cp.heads, causal=causal, exact=exact,
        mixing_depth=mixing, mixing_depth_bounds=depth_bounds, never=never,
        max_depth=max(max_depth, cp.layers),
        covered_fraction=lower, covered_bounds=(lower, upper), growth=growth,
        unreachable=unreachable, closest_path=path, closest_path_exact=exact, empty_rows=empty,
        empty_row_count=empty_count, spread=spread, kv_mismatches=mixed_kv_groups(cp),
    )


def _followed(keys: list[int], unreachable: tuple[int, int] | None) -> list[int]:
    return sorted(set(keys) | ({unreachable[1]} if unreachable else set()))


def _exact_flows(cp: CompiledPattern, block: int, causal: bool, own: list[LayerFlow] | None,
                 ) -> tuple[list[LayerFlow], Grid]:
    """The layers for the token-exact run: on small square blocks, so that most pairs travel
    through FULL blocks; a stack drawn on its own blocks (``own``) stays on them."""
    if own is not None:
        return own, cp.grid
    fine = _square(cp, min(EXACT_BLOCK, block))
    return layer_flows(fine, causal), fine.grid


def check_size(n: int, block: tuple[int, int], exact_limit: int = EXACT_LIMIT,
               max_depth: int | None = None) -> None:
    """Refuse, before anything is allocated, a ``reach`` whose state would not fit: the exact
    state holds n bits per position, the block bounds nb bits per block row, a few states alive
    at once. ``patternc check`` calls it before it compiles.

    >>> check_size(2**31 - 1, (128, 128))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    patternc.errors.PatternSizeError: bytes of block-level ... state at n = 2,147,483,647: ... (--block) ...
    """
    for name, value, low in (("exact_limit", exact_limit, 0), ("max_depth", max_depth, 1)):
        if value is not None:
            check_int(value, f"reach(): {name}", low=low)
    exact = n <= exact_limit
    side = n if exact else -(-n // max(block))
    require(STATES * side * words(side) * 8, MAX_REACH_BYTES,
            f"bytes of {'token-exact' if exact else 'block-level'} reachability state at n = {n:,}",
            "lower the exact limit (--exact-limit) for block-level bounds" if exact
            else "compile with a larger block (--block) for coarser bounds")


def _square(cp: CompiledPattern, block: int) -> CompiledPattern:
    """The same stack compiled with square blocks of ``block`` tokens (reachability needs them)."""
    return cp if cp.block == (block, block) else compile(cp.stack, cp.n, (block, block), cp.params)


UPPER_BUDGET = 1 << 29  # words OR-ed per layer by the upper bound (mostly streaming slices)


def _coarse(cp: CompiledPattern, block: int) -> CompiledPattern:
    """The stack at a square block (``block``, doubled as needed) whose layers the upper bound can
    afford: a head's stored blocks x words per row within ``UPPER_BUDGET``. Doubling the block at
    least halves the stored blocks, so the size is chosen from ``block``'s layouts, then compiled."""
    square = _square(cp, block)
    stored = max(square.layout(l, h).nnz for l in range(cp.layers) for h in range(cp.heads))
    while stored * words(-(-cp.n // block)) > UPPER_BUDGET and block < cp.n:
        block, stored = 2 * block, stored / 2
    return _square(cp, block)


def _coarsened(own: list[LayerFlow], grid: Grid, block: int, causal: bool) -> list[LayerFlow]:
    done: dict[int, LayerFlow] = {}
    for flow in own:
        if id(flow) not in done:
            done[id(flow)] = coarsen(flow, grid, block, causal)
    return [done[id(flow)] for flow in own]


def _square_flows(cp: CompiledPattern, block: int, causal: bool, own: list[LayerFlow] | None,
                  ) -> tuple[list[LayerFlow], Grid]:
    """The layers on square blocks of ``block`` tokens: the stack recompiled at that block, or,
    when it is drawn on its own blocks (``own``, its layers there), those blocks merged."""
    if own is None:
        square = _square(cp, block)
        return layer_flows(square, causal), square.grid
    return _coarsened(own, cp.grid, block, causal), Grid(cp.n, block, block)


def _upper_flows(cp: CompiledPattern, block: int, causal: bool, own: list[LayerFlow] | None,
                 ) -> tuple[list[LayerFlow], Grid]:
    """The layers at the square block the upper bound can afford (see ``_coarse``)."""
    if own is None:
        coarse = _coarse(cp, block)
        return layer_flows(coarse, causal), coarse.grid
    flows = _coarsened(own, cp.grid, block, causal)
    while max(len(f.blocks) for f in flows) * words(-(-cp.n // block)) > UPPER_BUDGET and block < cp.n:
        block *= 2  # still a multiple of both block sides
        flows = _coarsened(own, cp.grid, block, causal)
    return flows, Grid(cp.n, block, block)


def _empty_rows(cp: CompiledPattern) -> tuple[tuple[tuple[int, int, int], ...], int]:
    listed: list[tuple[int, int, int]] = []
    count = 0
    seen: dict = {}
    for l in range(cp.layers):
        for h in range(cp.heads):
            node = cp.node(l, h)
            if node not in seen:
                seen[node] = empty_rows(node, cp.layout(l, h))
            rows = seen[node]
            count += len(rows)
            listed += [(l, h, int(q)) for q in rows[: MAX_EMPTY_LISTED - len(listed)]]
    return tuple(listed), count


def _lowest_and_highest_bits(rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the index of the lowest and highest set bit (-1 where none)."""
    nonzero = rows != 0
    has = nonzero.any(axis=1)
    first_word = np.argmax(nonzero, axis=1)
    last_word = rows.shape[1] - 1 - np.argmax(nonzero[:, ::-1], axis=1)
    idx = np.arange(len(rows))
    low_word = np.maximum(rows[idx, first_word], np.uint64(1))  # rows with no bit: any value, masked
    lowest = low_word & (~low_word + np.uint64(1))  # isolate the lowest set bit: an exact power of 2
    low_bit = np.log2(lowest.astype(np.float64)).astype(np.int64)
    high_word = np.maximum(rows[idx, last_word], np.uint64(1))
    # Shift before converting: float64 rounds 2**64 - 1 up to 2**64, which would read as bit 64.
    upper_half = high_word >> np.uint64(32)
    high_bit = np.where(upper_half != 0,
                        32 + np.floor(np.log2(np.maximum(upper_half, np.uint64(1)).astype(np.float64))),
                        np.floor(np.log2(high_word.astype(np.float64)))).astype(np.int64)
    low = np.where(has, first_word * 64 + low_bit, -1)
    high = np.where(has, np.minimum(last_word * 64 + high_bit, width - 1), -1)
    return low, high


def _farthest(missing: np.ndarray, width: int) -> tuple[int, int] | None:
    """The set bit (row, col) farthest from the diagonal, or None."""
    low, high = _lowest_and_highest_bits(missing, width)
    rows = np.arange(len(missing))
    gaps = np.maximum(np.where(low >= 0, np.abs(rows - low), -1),
                      np.where(high >= 0, np.abs(rows - high), -1))
    if gaps.max(initial=-1) < 0:
        return None
    r = int(np.argmax(gaps))
    c = int(low[r]) if abs(r - low[r]) >= abs(r - high[r]) else int(high[r])
    return r, c


def _missing_pair(state: np.ndarray, envelope: np.ndarray | None, n: int) -> tuple[int, int] | None:
    missing = (envelope & ~state) if envelope is not None else ~state
    missing[:, -1] &= _valid_tail(n)
    return _farthest(missing, n)


def _missing_block_pair(upper: np.ndarray, grid: Grid, causal: bool) -> tuple[int, int] | None:
    """A token pair in an envelope block the upper bound never reaches (certainly unreachable)."""
    nb = grid.nbq
    envelope = prefix_mask(nb, nb) if causal else ~np.zeros((nb, words(nb)), np.uint64)
    missing = envelope & ~upper
    missing[:, -1] &= _valid_tail(nb)
    pair = _farthest(missing, nb)
    if pair is None:
        return None
    qb, kb = pair
    return min((qb + 1) * grid.bq, grid.n) - 1, kb * grid.bk


def _valid_tail(width: int) -> np.uint64:
    used = width - (words(width) - 1) * 64
    return ~np.uint64(0) if used == 64 else (np.uint64(1) << np.uint64(used)) - np.uint64(1)

