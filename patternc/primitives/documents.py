"""``documents``: packed sequences, split where each document starts (bound per batch at run time).

Training packs several documents into one sequence; a token must attend only its own document.
``documents($starts)`` allows ``(q, k)`` iff both lie in the same document, the documents starting
at the listed positions (a document always starts at 0). The starts change every batch, so they
are a list parameter bound when compiling:

    patternc.compile("causal & window(512) & documents($starts)", n, params={"starts": [0, 900, 3100]})

A document is a contiguous run of tokens, so a query block reads one contiguous range of keys (the
documents its rows belong to), and a block is FULL when its queries and keys are all in one
document, EMPTY when their documents differ, PARTIAL only where a boundary crosses it: everything
is decided from the documents of a block's first and last rows and columns, per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from patternc.lower.grid import EMPTY, FULL, KIND, PARTIAL, expand_ranges, lookup
from patternc.lower.node import Lowered
from patternc.primitives.registry import Arg, primitive

__all__ = ["Documents", "documents"]


@lru_cache(maxsize=64)
def _starts(starts: tuple[int, ...]) -> np.ndarray:
    return np.array(starts, np.int64)


@lru_cache(maxsize=16)
def _document_of(starts: tuple[int, ...], n: int) -> np.ndarray:
    """(n,) int32: the document of each token (a lookup table for the predicate on torch too)."""
    table = np.zeros(n, np.int32)
    table[_starts(starts)[1:]] = 1
    return np.cumsum(table, dtype=np.int32)


@dataclass(frozen=True, slots=True)
class Documents(Lowered):
    """``q`` and ``k`` in the same document; documents start at ``starts`` (sorted, with 0)."""

    starts: tuple[int, ...]
    n: int

    def _doc(self, x: np.ndarray) -> np.ndarray:
        return np.searchsorted(_starts(self.starts), x, "right") - 1

    def predicate(self, q, k):
        table = _document_of(self.starts, self.n)
        return lookup(table, q) == lookup(table, k)

    def candidates(self, grid):
        rows = np.arange(grid.nbq, dtype=np.int64)
        q0, q1 = grid.q_bounds(rows)
        bounds = np.append(_starts(self.starts), grid.n)
        first_key = bounds[self._doc(q0)]  # the start of the first row's document
        last_key = bounds[self._doc(q1 - 1) + 1] - 1  # the end of the last row's document
        return expand_ranges(rows, first_key // grid.bk, last_key // grid.bk)

    def classify(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        dq0, dq1, dk0, dk1 = (self._doc(x) for x in (q0, q1 - 1, k0, k1 - 1))
        full = (dq0 == dq1) & (dk0 == dk1) & (dq0 == dk0)
        empty = (dq1 < dk0) | (dk1 < dq0)  # documents are contiguous: no common one
        return np.where(full, FULL, np.where(empty, EMPTY, PARTIAL)).astype(KIND)

    def block_key(self, grid, i, j):
        kind = self.classify(grid, i, j)  # full and empty blocks all look alike; a crossed one is itself
        return (np.where(kind == PARTIAL, i, -1 - kind), np.where(kind == PARTIAL, j, 0))

    def size_hint(self, grid):
        lengths = np.diff(np.append(_starts(self.starts), grid.n))
        per_doc = (lengths / grid.bq + 1) * (lengths / grid.bk + 1)
        return float(min(per_doc.sum(), grid.nbq * grid.nbk))

    def lookback(self, n):
        return int(np.diff(np.append(_starts(self.starts), n)).max()) - 1

    def describe(self, n):
        return f"documents(<{len(self.starts)} starts>)"


@primitive(Arg("starts", "indices", doc="the positions where documents start (0 always does)"),
           allows="q and k in the same document", source="packed training sequences (document masking)",
           group="positions")
def documents(scope, starts: tuple[int, ...]) -> Lowered:
    """Each token sees only its own document; documents start at ``starts`` and at 0. Bind the
    starts per batch with a list parameter, ``documents($starts)``, or write them: ``documents([0,
    5])``. With ``causal``, a document's first token sees only itself.

    >>> cp = patternc.compile("causal & documents($starts)", n=8, params={"starts": [3, 5]})
    >>> cp.to_dense(0, 0).astype(int)
    array([[1, 0, 0, 0, 0, 0, 0, 0],
           [1, 1, 0, 0, 0, 0, 0, 0],
           [1, 1, 1, 0, 0, 0, 0, 0],
           [0, 0, 0, 1, 0, 0, 0, 0],
           [0, 0, 0, 1, 1, 0, 0, 0],
           [0, 0, 0, 0, 0, 1, 0, 0],
           [0, 0, 0, 0, 0, 1, 1, 0],
           [0, 0, 0, 0, 0, 1, 1, 1]])
    """
    return Documents(tuple(sorted({0, *starts})), scope.grid.n)
