"""FlashInfer's variable block-sparse attention: one partition into whole cells per KV head.

``flashinfer.VariableBlockSparseAttentionWrapper.plan(block_mask_map, block_row_sz, block_col_sz,
num_qo_heads, num_kv_heads, head_dim, causal=...)`` takes, per KV head, a boolean
``block_mask_map (num_kv_heads, MB, NB)`` over cells of ``block_row_sz (num_kv_heads, MB)`` query
rows by ``block_col_sz (num_kv_heads, NB)`` key columns (int32; each head's sizes sum to ``n``),
and attends every pair of a selected cell: there are no per-element masks. Each block row is one
request whose keys are its selected cells' keys, in order; with ``causal=True`` a request masks
``kv_idx > q_idx + kv_len - qo_len`` (FlashInfer's prefill kernels), which is ``k > q`` when the
row's last selected cell is its own diagonal cell (``flashinfer_variable_to_dense`` applies the
rule as written). Query heads share their KV head's layout (``Stack.kv_heads``).

``to_flashinfer_variable`` cuts each KV head's layout into the coarsest uniform cells
(``patternc.export.partition``), with ``causal=True`` when the diagonal cells can be left to the
kernel, and pads every head to the same number of cells. A layout that needs single-token cells (a
window's diagonal edge) is refused: use ``BlockSparseAttentionWrapper`` with per-block masks.

    fi = cp.to_flashinfer_variable(layer)
    wrapper.plan(*(torch.from_numpy(a).cuda() for a in (fi.block_mask_map, fi.block_row_sz,
                 fi.block_col_sz)), num_qo_heads, num_kv_heads, head_dim, causal=fi.causal)

>>> fi = to_flashinfer_variable(patternc.compile("causal & chunk(96)", n=256, block=64), 0)
>>> fi.causal, fi.block_row_sz.tolist(), fi.block_mask_map.shape
(True, [[64, 32, 32, 64, 64]], (1, 5, 5))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import PatternMeaningError, PatternSizeError
from patternc.export.convert import dense_size
from patternc.export.gqa import KVPattern, kv_patterns, query_heads
from patternc.export.partition import (
    Partition,
    PartitionError,
    cell_map,
    check_causal_rows,
    equalize,
    partition,
)
from patternc.layout import is_causal
from patternc.limits import DENSE_LIMIT
from patternc.version import __version__

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["FlashInferVariable", "flashinfer_variable_to_dense", "save_flashinfer_variable",
           "to_flashinfer_variable"]


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class FlashInferVariable:
    """``VariableBlockSparseAttentionWrapper.plan``'s inputs for one layer; ``exact`` is False when
    a KV group's differing heads were united."""

    block_mask_map: np.ndarray  # (Hk, MB, NB) bool
    block_row_sz: np.ndarray  # (Hk, MB) int32
    block_col_sz: np.ndarray  # (Hk, NB) int32
    causal: bool
    exact: bool


def to_flashinfer_variable(cp: CompiledPattern, layer: int, union: bool = False,
                           max_cells: int = DENSE_LIMIT) -> FlashInferVariable:
    """FlashInfer's variable block-sparse inputs for ``layer``, exact (see the module docstring).

    A KV group whose query heads differ is refused unless ``union`` (then its union: not exact
    for those heads). The maps of every KV head together hold at most ``max_cells`` cells.
    """
    patterns = kv_patterns(cp, layer, union)
    # causal=True needs square blocks and causal heads; it is tried first, as it is the only way a
    # causal diagonal (or a chunk's) takes whole cells
    modes = (True, False) if cp.block[0] == cp.block[1] and all(is_causal(p.node, p.layout)
                                                                 for p in patterns) else (False,)
    found = [_head_cuts(patterns, mode, max_cells) for mode in modes]
    chosen = next((cuts for cuts in found if isinstance(cuts, list)), None)
    if chosen is None:
        p, err = found[0]  # the first mode's complaint: with causal heads, the one about causal cells
        raise PatternMeaningError(
            f"layer {layer}, KV head {p.kv_head} ({query_heads(p.heads)}): FlashInfer's variable "
            f"block-sparse wrapper takes whole cells only, and {err}; use BlockSparseAttentionWrapper with "
            "per-block masks instead (to_bsr(layer, head, with_masks=True), --format bsr --masks)")
    rows = max(len(c.rows) for c in chosen) - 1
    cols = max(len(c.cols) for c in chosen) - 1
    if len(patterns) * rows * cols > max_cells:
        raise PatternSizeError(f"block_mask_map of {len(patterns)} x {rows:,} x {cols:,} cells exceeds the "
                               f"limit of {max_cells:,}; compile with a larger block or pass max_cells")
    maps, row_sz, col_sz = [], [], []
    for p, c in zip(patterns, chosen, strict=True):
        c = Partition(equalize(c.rows, rows), equalize(c.cols, cols), c.causal)  # every head as many cells
        maps.append(cell_map(p.node, p.layout, c))
        row_sz.append(np.diff(c.rows))
        col_sz.append(np.diff(c.cols))
    return FlashInferVariable(np.stack(maps), np.stack(row_sz).astype(np.int32),
                              np.stack(col_sz).astype(np.int32), chosen[0].causal,
                              all(p.exact for p in patterns))


def _head_cuts(patterns: list[KVPattern], causal: bool, max_cells: int):
    """Every KV head's partition in one mode, or (the first head that has none, why)."""
    out = []
    for p in patterns:
        try:
            cuts = partition(p.node, p.layout, causal, max_cells)
            if causal:
                check_causal_rows(cell_map(p.node, p.layout, cuts), cuts)
        except PartitionError as err:
            return p, err
        out.append(cuts)
    return out


def flashinfer_variable_to_dense(block_mask_map: np.ndarray, block_row_sz: np.ndarray,
                                 block_col_sz: np.ndarray, causal: bool,
                                 max_elements: int = DENSE_LIMIT) -> np.ndarray:
    """(num_kv_heads, n, n) bool, True where the wrapper attends, from its documented semantics:
    a selected cell attends all its pairs; with ``causal`` each block row masks ``kv_idx > q_idx +
    kv_len - qo_len`` over its selected keys in order (FlashInfer's bottom-right alignment).

    >>> flashinfer_variable_to_dense(np.array([[[1, 0], [1, 1]]], bool), np.array([[2, 1]]),
    ...                              np.array([[2, 1]]), causal=True)[0].astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 1]])
    """
    mask_map = np.asarray(block_mask_map, bool)
    row_sz, col_sz = np.asarray(block_row_sz, np.int64), np.asarray(block_col_sz, np.int64)
    if mask_map.ndim != 3 or row_sz.shape != mask_map.shape[:2] or col_sz.shape != mask_map.shape[::2]:
        raise PatternMeaningError(f"block_mask_map must be (H, MB, NB) with block_row_sz (H, MB) and "
                                  f"block_col_sz (H, NB); got {mask_map.shape}, {row_sz.shape}, "
                                  f"{col_sz.shape}")
    n = int(row_sz[0].sum())
    if (row_sz.sum(axis=1) != n).any() or (col_sz.sum(axis=1) != n).any() or (row_sz < 0).any() \
            or (col_sz < 0).any():
        raise PatternMeaningError("every head's block_row_sz and block_col_sz must be non-negative and sum "
                                  "to the same n")
    dense_size((mask_map.shape[0], n, n), max_elements)
    out = np.zeros((mask_map.shape[0], n, n), bool)
    for h in range(mask_map.shape[0]):
        row_at, col_at = np.cumsum(row_sz[h]) - row_sz[h], np.cumsum(col_sz[h]) - col_sz[h]
        for a in range(mask_map.shape[1]):
            keys = np.concatenate([np.arange(col_at[b], col_at[b] + col_sz[h, b])
                                   for b in np.flatnonzero(mask_map[h, a])] or [np.zeros(0, np.int64)])
            queries = np.arange(row_at[a], row_at[a] + row_sz[h, a])
            allowed = np.ones((len(queries), len(keys)), bool)
            if causal:  # local kv index j <= local q index i + kv_len - qo_len
                offset = len(keys) - len(queries)
                allowed = np.arange(len(keys))[None, :] <= np.arange(len(queries))[:, None] + offset
            out[h, queries[:, None], keys[None, :]] = allowed
    return out


def save_flashinfer_variable(cp: CompiledPattern, path, union: bool = False) -> None:
    """Write every layer to a safetensors file: ``layer{l}.block_mask_map`` (Hk, MB, NB) bool,
    ``layer{l}.block_row_sz`` and ``.block_col_sz`` int32, and metadata ``causal`` (a JSON list, one
    flag per layer), ``exact``, ``n``, ``layers``, ``heads``, ``kv_heads``."""
    import json

    from patternc.export.file import write

    layers = [to_flashinfer_variable(cp, l, union) for l in range(cp.layers)]  # all built before writing
    tensors = {}
    for l, fi in enumerate(layers):
        for name in ("block_mask_map", "block_row_sz", "block_col_sz"):
            tensors[f"layer{l}.{name}"] = getattr(fi, name)
    metadata = {"format": "patternc-flashinfer-variable", "patternc_version": __version__, "n": str(cp.n),
                "layers": str(cp.layers), "heads": str(cp.heads), "kv_heads": str(cp.stack.kv_heads),
                "causal": json.dumps([fi.causal for fi in layers]),
                "exact": json.dumps(all(fi.exact for fi in layers))}
    write(path, tensors, metadata)
