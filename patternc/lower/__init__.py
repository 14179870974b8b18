"""Lowering: a bound syntax tree -> exact block enumeration (see ``node`` for the contract)."""

from patternc.lower.bind import Scope, lower
from patternc.lower.grid import EMPTY, FULL, PARTIAL, Blocks, Grid

__all__ = ["EMPTY", "FULL", "PARTIAL", "Blocks", "Grid", "Scope", "lower"]
