"""A compiled (layer, head): block CSR with FULL/PARTIAL kinds, and its statistics.

``indptr[nbq + 1]`` and ``indices[nnz]`` list, row by row in increasing column order, the key
blocks each query block touches; ``full[nnz]`` says which of them are FULL (every pair allowed);
the others are PARTIAL and take the token predicate. EMPTY blocks are not stored.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np

from patternc.lower.algebra import Complement, Intersect
from patternc.lower.grid import EMPTY, FULL, KIND, PARTIAL, Blocks, Grid
from patternc.lower.node import Lowered, pair_counts
from patternc.primitives.offsets import Band

__all__ = ["HeadStats", "Layout", "future_pair", "head_stats", "is_causal"]

INFLATION_WARNING = 2.0  # warn when stored blocks hold more than this many pairs per allowed pair


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class Layout:
    """Block CSR of one (layer, head); arrays are read-only. Indices are int32 everywhere in
    patternc (``MAX_LOWER_BYTES`` keeps a layout's blocks far below 2**31), as FlashInfer
    and FlexAttention take them. It unpacks as ``indptr, indices, full``."""

    grid: Grid
    indptr: np.ndarray  # int32 (nbq + 1,)
    indices: np.ndarray  # int32 (nnz,) key-block columns
    full: np.ndarray  # bool (nnz,)

    def __iter__(self):
        return iter((self.indptr, self.indices, self.full))

    @staticmethod
    def from_blocks(blocks: Blocks, grid: Grid) -> Layout:
        indptr = np.zeros(grid.nbq + 1, np.int32)
        np.cumsum(np.bincount(blocks.rows, minlength=grid.nbq), out=indptr[1:])
        layout = Layout(grid, indptr, blocks.cols.astype(np.int32), blocks.kinds == FULL)
        for array in (layout.indptr, layout.indices, layout.full):
            array.flags.writeable = False
        return layout

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def rows(self) -> np.ndarray:
        """Block row of each stored block (int64)."""
        return np.repeat(np.arange(self.grid.nbq, dtype=np.int64), np.diff(self.indptr))

    def kind_of(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Kind (EMPTY/PARTIAL/FULL, int8) of arbitrary blocks ``(i, j)``, by binary search."""
        wanted = np.asarray(i, np.int64) * self.grid.nbk + np.asarray(j, np.int64)
        if self.nnz == 0:
            return np.zeros(wanted.shape, KIND)
        keys = self.rows() * self.grid.nbk + self.indices
        pos = np.minimum(np.searchsorted(keys, wanted), self.nnz - 1)
        found = keys[pos] == wanted
        return np.where(found, np.where(self.full[pos], FULL, PARTIAL), EMPTY).astype(KIND)


@dataclass(frozen=True, slots=True)
class HeadStats:
    """Statistics of one (layer, head). Densities are fractions; pairs are exact counts."""

    layer: int
    head: int
    nnz: int  # stored blocks, FULL and PARTIAL
    full_blocks: int
    partial_blocks: int
    block_density: float  # stored blocks / all blocks
    allowed_pairs: int
    token_density: float  # allowed pairs / envelope (n(n+1)/2 for causal patterns, else n^2; of the rows)
    partial_share: float  # partial blocks / stored blocks
    max_blocks_per_row: int
    stored_pairs: int  # pairs inside stored blocks: what a block-sparse kernel computes
    inflation: float  # stored_pairs / allowed_pairs
    waste_blocks: int  # PARTIAL blocks that are in fact full or empty (0 from our compiler)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def nnz_blocks(self) -> int:
        """Deprecated name of ``nnz``."""
        warnings.warn("HeadStats.nnz_blocks is deprecated: use nnz", DeprecationWarning, stacklevel=2)
        return self.nnz


def head_stats(node: Lowered, layout: Layout, layer: int, head: int, causal: bool) -> HeadStats:
    """Exact statistics of one compiled (layer, head)."""
    grid = layout.grid
    rows, cols = layout.rows(), layout.indices.astype(np.int64)
    q0, q1 = grid.q_bounds(rows)
    k0, k1 = grid.k_bounds(cols)
    area = (q1 - q0) * (k1 - k0)
    partial = ~layout.full
    counts = pair_counts(node, grid, rows[partial], cols[partial])
    allowed = int(area[layout.full].sum() + counts.sum())
    stored = int(area.sum())
    n, f = grid.n, grid.first  # the rows [f, n): every query unless a query range was compiled
    envelope = (n * (n + 1) - f * (f + 1)) // 2 if causal else (n - f) * n
    nnz = layout.nnz
    return HeadStats(
        layer=layer,
        head=head,
        nnz=nnz,
        full_blocks=int(layout.full.sum()),
        partial_blocks=int(partial.sum()),
        block_density=nnz / (grid.nbq * grid.nbk),
        allowed_pairs=allowed,
        token_density=allowed / envelope,
        partial_share=float(partial.sum()) / nnz if nnz else 0.0,
        max_blocks_per_row=int(np.diff(layout.indptr).max(initial=0)),
        stored_pairs=stored,
        inflation=stored / allowed if allowed else float("inf") if stored else 1.0,
        waste_blocks=int(((counts == 0) | (counts == area[partial])).sum()),
    )


def future_pair(node: Lowered, layout: Layout) -> tuple[int, int] | None:
    """Some allowed (q, k) with k > q, or None when the head is causal; only stored blocks that
    reach past the diagonal are examined, pair by pair where they cross it."""
    grid = layout.grid
    rows, cols = layout.rows(), layout.indices.astype(np.int64)
    q0, _ = grid.q_bounds(rows)
    _, k1 = grid.k_bounds(cols)
    reaching_future = k1 - 1 > q0
    future = Intersect(node, Complement(Band(0, grid.n)))
    i, j = rows[reaching_future], cols[reaching_future]
    kinds = future.classify(grid, i, j)
    hit = np.flatnonzero(kinds != EMPTY)
    if len(hit) == 0:
        return None
    bi, bj = int(i[hit[0]]), int(j[hit[0]])
    q_first, q_end = grid.q_bounds(np.array([bi]))
    qs = np.arange(int(q_first[0]), int(q_end[0]))[:, None]
    ks = np.arange(bj * grid.bk, min((bj + 1) * grid.bk, grid.n))[None, :]
    dq, dk = np.nonzero(np.broadcast_to(future.predicate(qs, ks), (len(qs), ks.shape[1])))
    return int(qs[dq[0], 0]), int(ks[0, dk[0]])


def is_causal(node: Lowered, layout: Layout) -> bool:
    """True when the pattern allows no pair with ``k > q``."""
    return future_pair(node, layout) is None
