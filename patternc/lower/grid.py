"""The block grid and the small array helpers every lowered node shares.

A sequence of ``n`` tokens is cut into query blocks of ``bq`` rows and key blocks of ``bk`` columns;
the last block of each may be short when ``n`` does not divide. Block ``(i, j)`` covers queries
``[i*bq, min((i+1)*bq, n))`` and keys ``[j*bk, min((j+1)*bk, n))``. Each block is EMPTY, PARTIAL or
FULL under a pattern; only non-empty blocks are stored.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

__all__ = ["EMPTY", "FULL", "PARTIAL", "Blocks", "Grid", "every_block", "expand_ranges", "lookup"]

EMPTY, PARTIAL, FULL = 0, 1, 2  # ordered so that union is max and intersection is min
KIND = np.int8


@dataclass(frozen=True, slots=True)
class Grid:
    """Sequence length and block shape: ``Grid(n=4096, bq=128, bk=128)``. With ``first``, only the
    queries ``[first, n)`` are on the grid (against every key ``[0, n)``): the rows a chunked
    prefill or a decode step computes. Query block ``i`` starts at token ``first + i * bq``."""

    n: int
    bq: int
    bk: int
    first: int = 0  # the first query on the grid

    @property
    def nq(self) -> int:
        """Queries on the grid."""
        return self.n - self.first

    @property
    def nbq(self) -> int:
        return -(-self.nq // self.bq)

    @property
    def nbk(self) -> int:
        return -(-self.n // self.bk)

    def q_bounds(self, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First query and one past the last query of block rows ``i``."""
        q0 = self.first + i * self.bq
        return q0, np.minimum(q0 + self.bq, self.n)

    def k_bounds(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First key and one past the last key of block columns ``j``."""
        k0 = j * self.bk
        return k0, np.minimum(k0 + self.bk, self.n)


@dataclass(frozen=True, slots=True)
class Blocks:
    """Non-empty blocks sorted by (row, col), with their kinds (PARTIAL or FULL)."""

    rows: np.ndarray  # int64 (m,)
    cols: np.ndarray  # int64 (m,)
    kinds: np.ndarray  # int8 (m,)

    @staticmethod
    def empty() -> Blocks:
        z = np.zeros(0, np.int64)
        return Blocks(z, z, np.zeros(0, KIND))

    def __len__(self) -> int:
        return len(self.rows)

    def keys(self, grid: Grid) -> np.ndarray:
        """One sortable int64 per block: ``row * nbk + col``."""
        return self.rows * grid.nbk + self.cols

    def nonempty(self) -> Blocks:
        keep = self.kinds != EMPTY
        return Blocks(self.rows[keep], self.cols[keep], self.kinds[keep])


def every_block(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of every block of the grid, sorted by row then column."""
    rows = np.repeat(np.arange(grid.nbq, dtype=np.int64), grid.nbk)
    return rows, np.tile(np.arange(grid.nbk, dtype=np.int64), grid.nbq)


def expand_ranges(owner: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand inclusive ranges ``[lo, hi]`` into (owner, value) pairs, in order.

    >>> expand_ranges(np.array([7, 8]), np.array([0, 5]), np.array([1, 5]))
    (array([7, 7, 8]), array([0, 1, 5]))
    """
    lens = np.maximum(hi - lo + 1, 0)
    total = int(lens.sum())
    if total == 0:
        z = np.zeros(0, np.int64)
        return z, z
    start_of_range = np.cumsum(lens) - lens
    values = np.arange(total, dtype=np.int64) + np.repeat(lo - start_of_range, lens)
    return np.repeat(owner, lens), values


# ---- token predicates over numpy or torch ----------------------------------------------------------

_TORCH_TABLES: dict[tuple[int, str], object] = {}


def lookup(table: np.ndarray, index):
    """``table[index]`` where ``index`` is a numpy array or a torch tensor.

    Predicates are written once and run on numpy (the compiler, ``allows``) and on torch
    (FlexAttention's ``mask_mod``); constant tables are converted once per device and kept.
    """
    if isinstance(index, (np.ndarray, np.integer, int)):
        return table[index]
    device = str(index.device)
    cache_key = (id(table), device)
    tensor = _TORCH_TABLES.get(cache_key)
    if tensor is None:
        import torch

        tensor = torch.from_numpy(np.array(table)).to(device)  # a copy: tables are read-only
        _TORCH_TABLES[cache_key] = tensor
        weakref.finalize(table, _TORCH_TABLES.pop, cache_key, None)
    return tensor[index]
