"""FlashAttention 4 (CuTe-DSL) block sparsity: full and partial key blocks per query block.

FA4's ``flash_attn.cute`` forward takes ``BlockSparseTensorsTorch(mask_block_cnt, mask_block_idx,
full_block_cnt, full_block_idx, block_size=(bq, bk))``: per (batch, head, query block) the count of
partial key blocks, which get the ``mask_mod``, and their indices, ``(B, H, nbq)`` and ``(B, H,
nbq, w)`` int32, and the same for full blocks, which skip it. Batch and head axes may be 1 (they
are broadcast); ``w`` may be narrower than the key blocks, since FA4 reads only each row's first
``count`` entries. It is FlexAttention's ``BlockMask`` key side under other names (torch's
``flex_attention(..., kernel_options={"BACKEND": "FLASH"})`` passes a ``BlockMask``'s tables to FA4
as they are), so the tables here are ``to_block_mask``'s compact ones, as numpy arrays.

Tile sizes: FA4 requires ``bk`` equal to its kernel's key tile (``tile_n``, 128 for its SM90 and
SM100 forward kernels) and ``bq`` a multiple of ``q_stage x tile_m`` (``tile_m`` 128; ``q_stage`` 1
or 2 on SM100), so compile with ``block=128`` (or ``(256, 128)``). The partial blocks take the exact
predicate: ``cp.to_block_mask(layer).mask_mod`` (``layer_mask_mod``) for torch's FLASH backend, or
the same predicate written as a CuTe-DSL ``mask_mod`` for ``flash_attn.cute`` itself.

>>> fa = to_fa4(patternc.compile("causal & window(300)", n=1024, block=128), 0)
>>> fa.mask_block_cnt.shape, fa.mask_block_idx.shape, fa.full_block_idx.shape, fa.block_size
((1, 1, 8), (1, 1, 8, 3), (1, 1, 8, 1), (128, 128))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import PatternMeaningError
from patternc.export.convert import dense_size
from patternc.export.tables import BlockLists, layer_lists
from patternc.limits import DENSE_LIMIT
from patternc.version import __version__

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["FA4BlockSparse", "fa4_to_dense", "save_fa4", "to_fa4"]


@dataclass(frozen=True, slots=True, eq=False)  # eq=False: numpy arrays have no single truth value
class FA4BlockSparse:
    """``BlockSparseTensorsTorch``'s fields for one layer, as int32 numpy arrays (read-only; heads
    that share a layout share memory): ``torch.from_numpy(a).cuda()`` each."""

    mask_block_cnt: np.ndarray  # (1, H, nbq)
    mask_block_idx: np.ndarray  # (1, H, nbq, w)
    full_block_cnt: np.ndarray  # (1, H, nbq)
    full_block_idx: np.ndarray  # (1, H, nbq, w')
    block_size: tuple[int, int]


def to_fa4(cp: CompiledPattern, layer: int) -> FA4BlockSparse:
    """FA4's block-sparse tensors for every head of ``layer`` (see the module docstring)."""
    lists = layer_lists(cp, layer, transposed=False)

    def per_head(block_lists: BlockLists) -> tuple[np.ndarray, np.ndarray]:
        num, idx = block_lists.num[lists.heads], block_lists.idx  # counts: (H, nbq), one per head
        idx = np.broadcast_to(idx, (cp.heads, *idx.shape[1:])) if len(idx) == 1 else idx[lists.heads]
        return num[None], idx[None]

    mask_cnt, mask_idx = per_head(lists.partial_kv)
    full_cnt, full_idx = per_head(lists.full_kv)
    for a in (mask_cnt, mask_idx, full_cnt, full_idx):
        a.flags.writeable = False
    return FA4BlockSparse(mask_cnt, mask_idx, full_cnt, full_idx, cp.block)


def fa4_to_dense(mask_block_cnt, mask_block_idx, full_block_cnt, full_block_idx, block_size: tuple[int, int],
                 n: int, mask_mod, max_elements: int = DENSE_LIMIT) -> np.ndarray:
    """(B, H, n, n) bool, True where FA4 attends, by its documented semantics: a full block attends
    every pair, a partial block the pairs its ``mask_mod(b, h, q_idx, kv_idx)`` allows (called on
    torch tensors, as FlexAttention calls it), any other pair is masked; each row's first ``count``
    entries count, the rest of the row is ignored.

    >>> fa = to_fa4(cp := patternc.compile("causal & window(5)", n=20, block=8), 0)
    >>> dense = fa4_to_dense(fa.mask_block_cnt, fa.mask_block_idx, fa.full_block_cnt, fa.full_block_idx,
    ...                      fa.block_size, cp.n, cp.to_block_mask(0).mask_mod)
    >>> bool((dense[0, 0] == cp.to_dense(0, 0)).all())
    True
    """

    tables = [np.asarray(a) for a in (mask_block_cnt, mask_block_idx, full_block_cnt, full_block_idx)]
    b, h, nbq = tables[0].shape
    bq, bk = block_size
    if nbq != -(-n // bq) or any(t.shape[:3] != (b, h, nbq) for t in tables[1:]) \
            or tables[1].ndim != 4 or tables[3].ndim != 4:
        rows = -(-n // bq)
        raise PatternMeaningError(f"FA4 tables must be (B, H, {rows}) counts and (B, H, {rows}, w) indices "
                                  f"for n = {n} and block {bq}; got {[t.shape for t in tables]}")
    dense_size((b, h, n, n), max_elements)
    nbk = -(-n // bk)
    blocks = np.zeros((2, b, h, nbq, nbk), bool)  # [partial, full] per block
    for kind, (cnt, idx) in enumerate(((tables[0], tables[1]), (tables[2], tables[3]))):
        listed = np.arange(idx.shape[-1]) < cnt[..., None]  # (B, H, nbq, w): a row's first count entries
        where = np.nonzero(listed)
        blocks[kind][(*where[:3], idx[listed])] = True
    per_token = blocks.repeat(bq, axis=3).repeat(bk, axis=4)[..., :n, :n]  # (2, B, H, n, n)
    allowed = np.stack([_every_head(mask_mod, bi, h, n) for bi in range(b)])  # (B, H, n, n)
    return per_token[1] | (per_token[0] & allowed)


def _every_head(mask_mod, b: int, heads: int, n: int) -> np.ndarray:
    """(H, n, n): ``mask_mod`` on every pair of every head, in one call where it broadcasts over a
    head tensor (ours do, as FlexAttention's vmap needs), else head by head."""
    import torch

    q, k = torch.arange(n)[:, None], torch.arange(n)[None, :]
    out = torch.as_tensor(mask_mod(torch.tensor(b), torch.arange(heads)[:, None, None], q[None], k[None]))
    if tuple(out.shape) == (heads, n, n):
        return out.numpy()
    return np.stack([torch.as_tensor(mask_mod(torch.tensor(b), torch.tensor(h), q, k)).numpy()
                     for h in range(heads)])


def save_fa4(cp: CompiledPattern, path) -> None:
    """Write every layer to a safetensors file: ``layer{l}.mask_block_cnt``, ``.mask_block_idx``,
    ``.full_block_cnt``, ``.full_block_idx`` (int32), and metadata ``block_size`` (``bq,bk``), ``n``,
    ``layers``, ``heads`` (the mask_mod is the pattern: ``patternc.compile`` it from ``stack``)."""
    import json

    from patternc.export.file import write

    tensors = {}
    for l in range(cp.layers):
        fa = to_fa4(cp, l)
        for name in ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx"):
            tensors[f"layer{l}.{name}"] = np.ascontiguousarray(getattr(fa, name))
    metadata = {"format": "patternc-fa4", "patternc_version": __version__, "n": str(cp.n),
                "block_size": f"{cp.block[0]},{cp.block[1]}", "layers": str(cp.layers),
                "heads": str(cp.heads),
                "stack": json.dumps(cp.stack.to_dict(), sort_keys=True),
                "params": json.dumps(dict(cp.params))}
    write(path, tensors, metadata)
