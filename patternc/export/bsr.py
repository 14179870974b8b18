"""Block CSR of one (layer, head), with optional per-block token masks: FlashInfer's input.

FlashInfer's ``BlockSparseAttentionWrapper.plan(indptr, indices, M, N, R, C, num_qo_heads,
num_kv_heads, head_dim, mask=...)`` takes block-row pointers and column indices of ``R x C``
blocks and, where blocks are not all-allowed, a ``(nnz, R, C)`` boolean mask. Its plan applies one
layout to every head it is given, so plan once per distinct head layout::

    b = cp.to_bsr(layer, head, with_masks=True)
    M, N = b.nbq * b.block[0], b.nbk * b.block[1]   # pad q and k/v to whole blocks if n does not divide
    wrapper.plan(torch.from_numpy(b.indptr).cuda(), torch.from_numpy(b.indices).cuda(), M, N,
                 *b.block, 1, 1, head_dim, mask=torch.from_numpy(b.masks).cuda())

Positions past ``n`` are False in ``masks``, so padded keys are never attended.

``save_bsr`` writes every head of every layer to one safetensors file, with tensors named
``layer{l}.head{h}.indptr`` (int32), ``.indices`` (int32), ``.full`` (bool) and, with masks,
``.masks`` (bool, nnz x bq x bk); its metadata gives ``n``, ``block`` (``bq,bk``), ``layers`` and
``heads``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import PatternSizeError
from patternc.limits import DENSE_LIMIT
from patternc.lower.node import stored_masks
from patternc.version import __version__

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["BlockCSR", "save_bsr", "to_bsr"]


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class BlockCSR:
    """Block CSR of one (layer, head). All arrays are read-only.

    ``indptr`` (nbq + 1,) int32 and ``indices`` (nnz,) int32 list each query block's key blocks
    in increasing order; ``full`` (nnz,) bool marks FULL blocks; ``masks`` (nnz, bq, bk) bool, when
    asked for, is True where a pair is allowed (all True in FULL blocks, False past ``n``).
    """

    indptr: np.ndarray
    indices: np.ndarray
    block: tuple[int, int]
    n: int
    full: np.ndarray
    masks: np.ndarray | None = None

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def nbq(self) -> int:
        return len(self.indptr) - 1

    @property
    def nbk(self) -> int:
        return -(-self.n // self.block[1])


def to_bsr(cp: CompiledPattern, layer: int = 0, head: int = 0, with_masks: bool = False,
           max_elements: int | None = None) -> BlockCSR:
    """Block CSR of (layer, head); with ``with_masks``, a token mask per stored block.

    Masks hold ``nnz * bq * bk`` booleans and are refused above ``max_elements`` (default: the
    dense-mask limit, 2**28).

    >>> b = to_bsr(patternc.compile("causal & window(100)", n=1000, block=64), with_masks=True)
    >>> b.indptr.shape, b.masks.shape
    ((17,), (45, 64, 64))
    """
    layout = cp.layout(layer, head)
    indptr = layout.indptr  # int32, as FlashInfer takes it (Layout's indices are int32 throughout)
    masks = None
    if with_masks:
        limit = DENSE_LIMIT if max_elements is None else max_elements
        size = layout.nnz * cp.block[0] * cp.block[1]
        if size > limit:
            raise PatternSizeError(
                f"per-block masks of {layout.nnz:,} blocks x {cp.block[0]} x {cp.block[1]} = {size:,}"
                f" booleans exceed the limit of {limit:,}; pass max_elements or omit the masks"
            )
        masks = stored_masks(cp.node(layer, head), layout)
    if masks is not None:
        masks.flags.writeable = False
    return BlockCSR(indptr, layout.indices, cp.block, cp.n, layout.full, masks)


def save_bsr(cp: CompiledPattern, path, with_masks: bool = False,
             max_elements: int | None = None) -> None:
    """Write the block CSR of every (layer, head) to a safetensors file (names in the module doc).

    >>> save_bsr(patternc.compile("conf/pattern/bigbird.yaml", n=4096), tmp_path / "bigbird.safetensors")
    """
    from patternc.export.file import write

    limit = DENSE_LIMIT if max_elements is None else max_elements
    if with_masks:  # the masks of all heads together, refused before any is built
        size = sum(cp.layout(l, h).nnz for l in range(cp.layers) for h in range(cp.heads))
        size *= cp.block[0] * cp.block[1]
        if size > limit:
            raise PatternSizeError(f"per-block masks of every head hold {size:,} booleans, more than "
                                   f"the limit of {limit:,}; omit the masks or pass max_elements")
    tensors = {}
    for l in range(cp.layers):
        for h in range(cp.heads):
            b = to_bsr(cp, l, h, with_masks=with_masks, max_elements=limit)
            arrays = {"indptr": b.indptr, "indices": b.indices, "full": b.full, "masks": b.masks}
            tensors.update({f"layer{l}.head{h}.{name}": a for name, a in arrays.items() if a is not None})
    metadata = {"format": "patternc-bsr", "patternc_version": __version__, "n": str(cp.n),
                "block": f"{cp.block[0]},{cp.block[1]}", "layers": str(cp.layers),
                "heads": str(cp.heads)}
    write(path, tensors, metadata)
