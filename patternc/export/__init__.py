"""Exports of a compiled layout to the kernels that run it, and to a file.

- ``flex``: a FlexAttention ``BlockMask`` per layer (``CompiledPattern.to_block_mask``);
- ``bsr``: block CSR with optional per-block masks, as FlashInfer takes it (``to_bsr``);
- ``layout_array``: the ``(L, H, nbq, nbk)`` 0/1 layout of DeepSpeed / Triton (``to_block_layout``);
- ``file``: safetensors with JSON metadata that loads back identically (``save`` / ``load``).

The ``CompiledPattern`` methods are the public API; these functions do the work.
"""

from patternc.export.bsr import BlockCSR, save_bsr, to_bsr
from patternc.export.file import load, save
from patternc.export.flex import head_mask_mod, layer_mask_mod, to_block_mask
from patternc.export.layout_array import LAYOUT_LIMIT, to_block_layout

__all__ = [
    "LAYOUT_LIMIT",
    "BlockCSR",
    "head_mask_mod",
    "layer_mask_mod",
    "load",
    "save",
    "save_bsr",
    "to_block_layout",
    "to_block_mask",
    "to_bsr",
]
