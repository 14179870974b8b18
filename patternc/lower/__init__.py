"""Lowering: a bound syntax tree -> exact block enumeration (see ``node`` for the contract).

``bind.lower`` binds a checked syntax tree at one (layer, head); ``algebra`` combines nodes; the
primitives' nodes live in ``patternc.primitives``; ``rules`` simplifies; ``grid`` is the block grid.
"""

from patternc.lower.grid import EMPTY, FULL, PARTIAL, Blocks, Grid

__all__ = ["EMPTY", "FULL", "PARTIAL", "Blocks", "Grid"]
