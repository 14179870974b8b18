"""The peak-memory estimate a compile checks before lowering (``lowering_bytes``) against what lowering
really allocates (numpy's allocations, traced): never below it, so the limit refuses every compile
that would pass it; not far above it, so the limit does not refuse what would fit."""

from __future__ import annotations

import re
import tracemalloc

import pytest

import patternc
from patternc.lang import parse
from patternc.layout import Layout
from patternc.lower.bind import lower
from patternc.lower.grid import Grid
from patternc.lower.node import EVALUATION_BYTES, lowering_bytes

GRID = Grid(32768, 32, 32)  # 2**20 blocks: arrays per block dominate, in a fraction of a second

EXPRESSIONS = [
    "causal", "all", "none", "stride(3)", "window(5)", "band(-100, 3000)", "dilated(100, 7)",
    "diagonals([1, 100, 5000])", "fixed(256, 32)", "chunk(512) | global(64)", "prefix(20000) | causal",
    "tokens([1, 500, 9000]) | causal", "columns([5, 77]) & causal", "random(3, seed=1) | causal",
    "documents([0, 1000, 30000]) & causal", "causal & stride(3)", "causal & (stride(3) | window(5))",
    "stride(3) | window(5)", "~causal", "causal - stride(3)", "(stride(3) | window(5)) - stride(3)",
    "causal & (window(5) | stride(7) | sink(3))", "causal & ~window(7)",
    "(causal | window(5)) & (stride(3) | sink(9))", "stride(1000) | stride(999)",
]


def traced_peak(node, grid: Grid) -> int:
    tracemalloc.start()
    try:
        Layout.from_blocks(node.enumerate(grid), grid)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_the_estimate_bounds_the_measured_peak(expr):
    node = lower(parse(expr), GRID)
    peak, estimate = traced_peak(node, GRID), lowering_bytes(node, GRID)
    assert peak <= estimate, f"{expr}: measured {peak:,} bytes, estimated {estimate:,.0f}"
    # above: three times the peak, and a batch of pairs counted, which a compile may need
    assert estimate <= 3 * peak + EVALUATION_BYTES + 2**20, f"{expr}: {estimate:,.0f} for {peak:,}"


def test_the_limit_keeps_what_fits_and_refuses_what_does_not():
    """Dense causal at 1M tokens in 128-token blocks compiles (3.5 GiB estimated); causal & (stride(3) |
    window(5)) at 1.4M needed 11.7 GB and is refused before any block is built, as is its complement."""
    from patternc.limits import MAX_LOWER_BYTES

    big = Grid(2**20, 128, 128)
    assert lowering_bytes(lower(parse("causal"), big), big) < MAX_LOWER_BYTES
    for expr, n in (("causal & (stride(3) | window(5))", 1_400_000), ("~causal", 2**20)):
        with pytest.raises(patternc.PatternSizeError, match=re.escape(f"bytes to lower {expr} at n = {n:,}")):
            patternc.compile(expr, n)
