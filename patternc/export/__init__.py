"""Exports of a compiled layout to the kernels that run it, and to a file.

- ``flex``: a FlexAttention ``BlockMask`` per layer (``CompiledPattern.to_block_mask``);
- ``bsr``: block CSR with optional per-block masks, as FlashInfer takes it (``to_bsr``);
- ``layout_array``: the ``(L, H, nbq, nbk)`` 0/1 layout of DeepSpeed / Triton (``to_dense_blocks``);
- ``file``: safetensors with JSON metadata that ``patternc.load`` reads back identically (``save``).

The ``CompiledPattern`` methods are the public API; these functions do the work.
"""

from patternc.export.bsr import BlockCSR, save_bsr, to_bsr
from patternc.export.file import read, save
from patternc.export.flex import head_mask_mod, layer_mask_mod, to_block_mask
from patternc.export.layout_array import to_dense_blocks

__all__ = [
    "BlockCSR",
    "head_mask_mod",
    "layer_mask_mod",
    "read",
    "save",
    "save_bsr",
    "to_block_mask",
    "to_bsr",
    "to_dense_blocks",
]
