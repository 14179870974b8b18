"""Stacks shared by several test files."""

from __future__ import annotations

import patternc


def per_head_stack() -> patternc.Stack:
    """Two layers of four heads: windows growing with h; layer 1's heads 2-3 take stride | sink."""
    return patternc.Stack(default="causal & window(8 * (h + 1))", layers=2, heads=4,
                          overrides=(patternc.Override(expr="causal & (stride(7) | sink(3))",
                                                       layers=(1, 2), heads=(2, 4)),))
