"""Primitives tied to absolute positions: all, none, chunk, fixed, sink, global, prefix, tokens,
columns. Each is an entry (``@primitive``) over a node below: a short predicate, an exact block
classifier in closed form, and a candidate enumeration that visits only the blocks it can touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from patternc.errors import PatternMeaningError
from patternc.lower.algebra import Union
from patternc.lower.grid import EMPTY, FULL, KIND, PARTIAL, Grid, every_block, expand_ranges, lookup
from patternc.lower.node import BLOCK_BYTES, ENUMERATE_BYTES, Lowered, kinds_from_counts
from patternc.primitives.registry import Arg, primitive

__all__ = ["Chunk", "Columns", "Everything", "Global", "Nothing", "PeriodicColumns", "Prefix", "Sink",
           "Tokens", "all_", "chunk", "columns", "fixed", "global_", "none", "prefix", "sink", "tokens"]


def _row_ranges(grid: Grid, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blocks ``(i, j)`` with ``lo[i] <= j <= hi[i]`` for every block row ``i``."""
    return expand_ranges(np.arange(grid.nbq, dtype=np.int64), lo, hi)


def _every_row(grid: Grid, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same sorted block columns in every block row."""
    rows = np.repeat(np.arange(grid.nbq, dtype=np.int64), len(cols))
    return rows, np.tile(cols, grid.nbq)


def _kinds(full: np.ndarray, empty: np.ndarray) -> np.ndarray:
    return np.where(full, FULL, np.where(empty, EMPTY, PARTIAL)).astype(KIND)


@dataclass(frozen=True, slots=True)
class Everything(Lowered):
    """``all``: every pair."""

    def describe(self, n):
        return "all"

    def candidates(self, grid):
        return every_block(grid)

    def classify(self, grid, i, j):
        return np.full(len(i), FULL, KIND)

    def predicate(self, q, k):
        return (q >= 0) | (k >= 0)  # always true, shaped like the broadcast of q and k

    def block_key(self, grid, i, j):
        return ()

    def size_hint(self, grid):
        return float(grid.nbq * grid.nbk)

    def partial_hint(self, grid):
        return 0.0

    def enumerate_bytes(self, grid):
        return self.size_hint(grid) * (2 * BLOCK_BYTES + 2)  # every block, and the non-empty copy

    def classify_bytes(self, grid, m):
        return float(m)  # one kind each


@dataclass(frozen=True, slots=True)
class Nothing(Lowered):
    """``none``: no pair."""

    def lookback(self, n):
        return -1

    def candidates(self, grid):
        z = np.zeros(0, np.int64)
        return z, z

    def classify(self, grid, i, j):
        return np.full(len(i), EMPTY, KIND)

    def predicate(self, q, k):
        return (q < 0) & (k < 0)  # always false, shaped like the broadcast of q and k

    def block_key(self, grid, i, j):
        return ()

    def size_hint(self, grid):
        return 0.0


@dataclass(frozen=True, slots=True)
class Chunk(Lowered):
    """``q // c == k // c``: independent chunks of c tokens."""

    c: int

    def lookback(self, n):
        return min(self.c, n) - 1

    def describe(self, n):
        return f"chunk({self.c})"

    def candidates(self, grid):
        q0, q1 = grid.q_bounds(np.arange(grid.nbq, dtype=np.int64))
        first_key = (q0 // self.c) * self.c
        last_key = np.minimum(((q1 - 1) // self.c + 1) * self.c, grid.n) - 1
        return _row_ranges(grid, first_key // grid.bk, last_key // grid.bk)

    def classify(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        qa, qb, ka, kb = q0 // self.c, (q1 - 1) // self.c, k0 // self.c, (k1 - 1) // self.c
        return _kinds((qa == qb) & (ka == kb) & (qa == ka), (qb < ka) | (kb < qa))

    def predicate(self, q, k):
        return q // self.c == k // self.c

    def block_key(self, grid, i, j):
        q0, _ = grid.q_bounds(i)
        k0, _ = grid.k_bounds(j)
        apart = np.clip(q0 // self.c - k0 // self.c, -(grid.bq // self.c) - 2, grid.bk // self.c + 2)
        return apart, q0 % self.c, k0 % self.c

    def size_hint(self, grid):
        return grid.nbq * min(grid.nbk, (self.c + grid.bq) / grid.bk + 1)


@dataclass(frozen=True, slots=True)
class Sink(Lowered):
    """``k < g``: the first g tokens are seen by every query (StreamingLLM's attention sinks)."""

    g: int

    def describe(self, n):
        return f"sink({self.g})"

    def candidates(self, grid):
        hi = np.full(grid.nbq, (self.g - 1) // grid.bk, np.int64)
        return _row_ranges(grid, np.zeros(grid.nbq, np.int64), hi)

    def classify(self, grid, i, j):
        k0, k1 = grid.k_bounds(j)
        return _kinds(k1 <= self.g, k0 >= self.g)

    def predicate(self, q, k):
        return (k < self.g) | (q < 0)  # `q < 0` is false; it keeps the broadcast shape

    def block_key(self, grid, i, j):
        k0, _ = grid.k_bounds(j)
        return (np.where(k0 < self.g, k0, -1),)

    def size_hint(self, grid):
        return grid.nbq * ((self.g - 1) // grid.bk + 1.0)


@dataclass(frozen=True, slots=True)
class Global(Lowered):
    """``k < g or q < g``: the first g tokens see and are seen by everything (Longformer)."""

    g: int

    def describe(self, n):
        return f"global({self.g})"

    def candidates(self, grid):
        q0, _ = grid.q_bounds(np.arange(grid.nbq, dtype=np.int64))
        hi = np.where(q0 < self.g, grid.nbk - 1, (self.g - 1) // grid.bk)
        return _row_ranges(grid, np.zeros(grid.nbq, np.int64), hi)

    def classify(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        return _kinds((q1 <= self.g) | (k1 <= self.g), (q0 >= self.g) & (k0 >= self.g))

    def predicate(self, q, k):
        return (q < self.g) | (k < self.g)

    def block_key(self, grid, i, j):
        q0, _ = grid.q_bounds(i)
        k0, _ = grid.k_bounds(j)
        return np.where(q0 < self.g, q0, -1), np.where(k0 < self.g, k0, -1)

    def size_hint(self, grid):
        rows = (self.g - 1) // grid.bq + 1
        return rows * grid.nbk + grid.nbq * ((self.g - 1) // grid.bk + 1.0)


@dataclass(frozen=True, slots=True)
class Prefix(Lowered):
    """``q < p and k < p``: a bidirectional prefix (prefix LM, with ``causal | prefix(p)``)."""

    p: int

    def lookback(self, n):
        return self.p - 1

    def describe(self, n):
        return f"prefix({self.p})"

    def candidates(self, grid):
        q0, _ = grid.q_bounds(np.arange(grid.nbq, dtype=np.int64))
        hi = np.where(q0 < self.p, (self.p - 1) // grid.bk, -1)
        return _row_ranges(grid, np.zeros(grid.nbq, np.int64), hi)

    def classify(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        return _kinds((q1 <= self.p) & (k1 <= self.p), (q0 >= self.p) | (k0 >= self.p))

    def predicate(self, q, k):
        return (q < self.p) & (k < self.p)

    def block_key(self, grid, i, j):
        q0, _ = grid.q_bounds(i)
        k0, _ = grid.k_bounds(j)
        return np.where(q0 < self.p, q0, -1), np.where(k0 < self.p, k0, -1)

    def size_hint(self, grid):
        return ((self.p - 1) // grid.bq + 1.0) * ((self.p - 1) // grid.bk + 1)


@lru_cache(maxsize=64)
def _positions(positions: tuple[int, ...]) -> np.ndarray:
    return np.array(positions, np.int64)


@lru_cache(maxsize=64)
def _position_table(positions: tuple[int, ...], n: int) -> np.ndarray:
    table = np.zeros(n, bool)
    table[_positions(positions)] = True
    return table


def _shown(positions: tuple[int, ...]) -> str:
    if len(positions) <= 4:
        return str(list(positions))
    return f"[{positions[0]}, {positions[1]}, ..., {positions[-1]}]"


def _count_in(positions: tuple[int, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many of the sorted positions lie in each ``[lo, hi)``."""
    points = _positions(positions)
    return np.searchsorted(points, hi, "left") - np.searchsorted(points, lo, "left")


@dataclass(frozen=True, slots=True)
class Columns(Lowered):
    """``k`` in a list of positions: vertical lines (MInference)."""

    positions: tuple[int, ...]  # sorted, unique, each in [0, n)
    n: int

    def lookback(self, n):
        return n - 1 - min(self.positions)  # the last query reads the first column

    def forever(self, n):
        return (self.describe(n),)  # every later query reads them: they are never evicted

    def describe(self, n):
        return f"columns({_shown(self.positions)})"

    def candidates(self, grid):
        return _every_row(grid, np.unique(_positions(self.positions) // grid.bk))

    def classify(self, grid, i, j):
        k0, k1 = grid.k_bounds(j)
        return kinds_from_counts(_count_in(self.positions, k0, k1), k1 - k0)

    def predicate(self, q, k):
        return lookup(_position_table(self.positions, self.n), k) | (q < 0)

    def block_key(self, grid, i, j):
        k0, k1 = grid.k_bounds(j)
        return (np.where(_count_in(self.positions, k0, k1) > 0, k0, -1),)

    def size_hint(self, grid):
        return grid.nbq * min(len(self.positions), grid.nbk)


@dataclass(frozen=True, slots=True)
class Tokens(Lowered):
    """``q`` or ``k`` in a list of positions: chosen global tokens."""

    positions: tuple[int, ...]  # sorted, unique, each in [0, n)
    n: int

    def describe(self, n):
        return f"tokens({_shown(self.positions)})"

    def candidates(self, grid):
        points = _positions(self.positions)
        token_rows = np.unique((points[points >= grid.first] - grid.first) // grid.bq)
        token_cols = np.unique(points // grid.bk)
        other_rows = np.setdiff1d(np.arange(grid.nbq, dtype=np.int64), token_rows)
        rows = np.concatenate([np.repeat(token_rows, grid.nbk), np.repeat(other_rows, len(token_cols))])
        cols = np.concatenate([np.tile(np.arange(grid.nbk, dtype=np.int64), len(token_rows)),
                               np.tile(token_cols, len(other_rows))])
        order = np.argsort(rows * grid.nbk + cols, kind="stable")
        return rows[order], cols[order]

    def classify(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        in_q = _count_in(self.positions, q0, q1)
        in_k = _count_in(self.positions, k0, k1)
        return _kinds((in_q == q1 - q0) | (in_k == k1 - k0), (in_q == 0) & (in_k == 0))

    def predicate(self, q, k):
        table = _position_table(self.positions, self.n)
        return lookup(table, q) | lookup(table, k)

    def block_key(self, grid, i, j):
        q0, q1 = grid.q_bounds(i)
        k0, k1 = grid.k_bounds(j)
        return (np.where(_count_in(self.positions, q0, q1) > 0, q0, -1),
                np.where(_count_in(self.positions, k0, k1) > 0, k0, -1))

    def size_hint(self, grid):
        m = min(len(self.positions), grid.nbq)
        return m * grid.nbk + grid.nbq * min(len(self.positions), grid.nbk)

    def enumerate_bytes(self, grid):
        return 2 * self.size_hint(grid) * ENUMERATE_BYTES  # its candidates are built, then sorted


@dataclass(frozen=True, slots=True)
class PeriodicColumns(Lowered):
    """``k % c >= c - s``: the last s keys of every chunk of c (the summaries of ``fixed``)."""

    c: int
    s: int

    def describe(self, n):
        return f"fixed's summary columns (the last {self.s} of every {self.c})"

    def _count_below(self, x: np.ndarray) -> np.ndarray:
        """How many summary keys lie in ``[0, x)``."""
        return (x // self.c) * self.s + np.maximum(x % self.c - (self.c - self.s), 0)

    def _count(self, grid: Grid, j: np.ndarray) -> np.ndarray:
        k0, k1 = grid.k_bounds(j)
        return self._count_below(k1) - self._count_below(k0)

    def candidates(self, grid):
        all_cols = np.arange(grid.nbk, dtype=np.int64)
        return _every_row(grid, all_cols[self._count(grid, all_cols) > 0])

    def classify(self, grid, i, j):
        k0, k1 = grid.k_bounds(j)
        return kinds_from_counts(self._count(grid, j), k1 - k0)

    def predicate(self, q, k):
        return (k % self.c >= self.c - self.s) | (q < 0)

    def block_key(self, grid, i, j):
        k0, _ = grid.k_bounds(j)
        return (k0 % self.c,)

    def size_hint(self, grid):
        per_row = min(grid.nbk, grid.nbk * self.s / self.c + grid.n / self.c)
        return float(grid.nbq * per_row)


# ---- the entries ------------------------------------------------------------------------------------

_POSITIONS = dict(group="positions")


@primitive(allows="every pair", source="dense attention", **_POSITIONS)
def all_(scope) -> Lowered:
    """Every pair: dense attention in both directions (``causal`` is the decoder's).

    >>> int(patternc.compile("all", n=8).to_dense(0, 0).sum())
    64
    """
    return Everything()


@primitive(allows="no pair", source="the empty set, for algebra", **_POSITIONS)
def none(scope) -> Lowered:
    """No pair; ``A - B`` and ``A & ~B`` are the usual ways to remove pairs.

    >>> int(patternc.compile("none", n=8).to_dense(0, 0).sum())
    0
    """
    return Nothing()


@primitive(Arg("c", doc="chunk length"), allows="q // c == k // c", source="chunked / block-local attention",
           **_POSITIONS)
def chunk(scope, c: int) -> Lowered:
    """Independent chunks of ``c`` tokens: a query sees its own chunk only (Llama 4's chunked
    layers are ``causal & chunk(8192)``).

    >>> patternc.compile("causal & chunk(3)", n=7).to_dense(0, 0)[4].astype(int)
    array([0, 0, 0, 1, 1, 0, 0])
    """
    return Chunk(min(c, scope.grid.n))


@primitive(Arg("c", doc="chunk length"), Arg("s", doc="summary keys at the end of each chunk"),
           allows="q // c == k // c or k % c >= c - s", source="Sparse Transformer, fixed heads",
           **_POSITIONS)
def fixed(scope, c: int, s: int) -> Lowered:
    """Its own chunk of ``c`` tokens, and the last ``s`` tokens of every chunk, which summarise it
    for everyone: every pair is reached in two layers (key -> its chunk's summary -> query).

    >>> patternc.compile("causal & fixed(4, 1)", n=10).to_dense(0, 0)[9].astype(int)
    array([0, 0, 0, 1, 0, 0, 0, 1, 1, 1])
    """
    if s > c:
        raise PatternMeaningError(f"fixed(c, s) needs s <= c (s summary keys per chunk of c), got s = {s} > "
                                  f"c = {c}")
    if c >= scope.grid.n:  # one chunk holds the whole sequence
        return Everything()
    return Union(Chunk(c), PeriodicColumns(c, s))


@primitive(Arg("g", doc="sink tokens at the start"), allows="k < g", source="StreamingLLM's attention sinks",
           **_POSITIONS)
def sink(scope, g: int) -> Lowered:
    """The first ``g`` tokens, seen by every query.

    >>> patternc.compile("causal & (sink(2) | window(2))", n=8).to_dense(0, 0)[7].astype(int)
    array([1, 1, 0, 0, 0, 0, 1, 1])
    """
    return Sink(min(g, scope.grid.n))


@primitive(Arg("g", doc="global tokens at the start"), allows="k < g or q < g",
           source="Longformer / BigBird global tokens", **_POSITIONS)
def global_(scope, g: int) -> Lowered:
    """The first ``g`` tokens see and are seen by everything (``sink`` is the one-way half).

    >>> patternc.compile("global(1)", n=4).to_dense(0, 0).astype(int)
    array([[1, 1, 1, 1],
           [1, 0, 0, 0],
           [1, 0, 0, 0],
           [1, 0, 0, 0]])
    """
    return Global(min(g, scope.grid.n))


@primitive(Arg("positions", "indices", doc="the global tokens"), allows="k or q in the list",
           source="chosen global tokens (Longformer's task tokens)", **_POSITIONS)
def tokens(scope, positions: tuple[int, ...]) -> Lowered:
    """Chosen tokens that see and are seen by everything, anywhere in the sequence.

    >>> int(patternc.compile("tokens([0, 5])", n=8).to_dense(0, 0).sum())  # 2 rows + 2 columns - 4
    28
    """
    return Tokens(positions, scope.grid.n)


@primitive(Arg("positions", "indices", doc="the key positions"), allows="k in the list",
           source="MInference's vertical lines", **_POSITIONS)
def columns(scope, positions: tuple[int, ...]) -> Lowered:
    """Chosen keys, seen by every query (a ``sink`` anywhere in the sequence).

    >>> patternc.compile("causal & columns([1, 4])", n=6).to_dense(0, 0)[5].astype(int)
    array([0, 1, 0, 0, 1, 0])
    """
    return Columns(positions, scope.grid.n)


@primitive(Arg("p", doc="prefix length"), allows="q < p and k < p",
           source="prefix LM, with causal | prefix(p)", **_POSITIONS)
def prefix(scope, p: int) -> Lowered:
    """A bidirectional block over the first ``p`` tokens; ``causal | prefix(p)`` is a prefix LM.

    >>> patternc.compile("causal | prefix(2)", n=4).to_dense(0, 0).astype(int)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1]])
    """
    return Prefix(min(p, scope.grid.n))

