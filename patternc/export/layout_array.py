"""The ``(layers, heads, nbq, nbk)`` 0/1 block layout of DeepSpeed and Triton block-sparse kernels.

DeepSpeed's ``SparsityConfig.make_layout`` returns one ``(heads, nb, nb)`` int64 tensor with 1 where
a block is computed; Triton's ``blocksparse`` matmul and softmax take the same layout. Ours adds a
leading layer axis; pass ``layout[l]`` for layer ``l``. It is dense in blocks, so it is refused
above a size limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import PatternSizeError
from patternc.limits import LAYOUT_LIMIT

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["to_dense_blocks"]


def to_dense_blocks(cp: CompiledPattern, max_elements: int = LAYOUT_LIMIT) -> np.ndarray:
    """int64 ``(L, H, nbq, nbk)``: 1 where a block is stored (FULL or PARTIAL), else 0.

    >>> to_dense_blocks(patternc.compile("causal", n=512, block=128))[0, 0]
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1]])
    """
    grid = cp.grid
    shape = (cp.layers, cp.heads, grid.nbq, grid.nbk)
    size = int(np.prod(shape, dtype=np.int64))
    if size > max_elements:
        raise PatternSizeError(
            f"a block layout of {' x '.join(map(str, shape))} = {size:,} elements exceeds the limit of"
            f" {max_elements:,}; use layout() or to_bsr() per head, or pass max_elements"
        )
    out = np.zeros(shape, np.int64)
    for l in range(cp.layers):
        for h in range(cp.heads):
            layout = cp.layout(l, h)
            out[l, h, layout.rows(), layout.indices] = 1
    return out
