"""Exports of a compiled layout to the kernels that run it, and to a file.

- ``flex``: a FlexAttention ``BlockMask`` per layer (``CompiledPattern.to_block_mask``);
- ``bsr``: block CSR with optional per-block masks, as FlashInfer takes it (``to_bsr``);
- ``layout_array``: the ``(L, H, nbq, nbk)`` 0/1 layout of DeepSpeed / Triton (``to_dense_blocks``);
- ``flashinfer``: FlashInfer's variable block-sparse cells per KV head (``to_flashinfer_variable``);
- ``flashmask``: FlashMask's per-column row intervals per KV head (``to_flashmask``);
- ``fa4``: FlashAttention 4's block-sparse counts and indices (``to_fa4``);
- ``file``: safetensors with JSON metadata that ``patternc.load`` reads back identically (``save``).

Each consumer has a converter back to a dense mask written from its documented semantics
(``flashinfer_variable_to_dense``, ``flashmask_to_dense``, ``fa4_to_dense``), to check any input.
Helpers: ``tables`` (compact block lists), ``widths`` (how wide each device's FlexAttention needs
them), ``gqa`` (KV groups), ``columns`` and ``partition`` (the FlashMask and FlashInfer forms).

The ``CompiledPattern`` methods are the public API; these functions do the work.
"""

from patternc.export.bsr import BlockCSR, save_bsr, to_bsr
from patternc.export.fa4 import FA4BlockSparse, fa4_to_dense, save_fa4, to_fa4
from patternc.export.file import read, save
from patternc.export.flashinfer import (
    FlashInferVariable,
    flashinfer_variable_to_dense,
    save_flashinfer_variable,
    to_flashinfer_variable,
)
from patternc.export.flashmask import FlashMask, flashmask_to_dense, save_flashmask, to_flashmask
from patternc.export.flex import head_mask_mod, layer_mask_mod, to_block_mask
from patternc.export.layout_array import to_dense_blocks

__all__ = [
    "BlockCSR",
    "FA4BlockSparse",
    "FlashInferVariable",
    "FlashMask",
    "fa4_to_dense",
    "flashinfer_variable_to_dense",
    "flashmask_to_dense",
    "head_mask_mod",
    "layer_mask_mod",
    "read",
    "save",
    "save_bsr",
    "save_fa4",
    "save_flashinfer_variable",
    "save_flashmask",
    "to_block_mask",
    "to_bsr",
    "to_dense_blocks",
    "to_fa4",
    "to_flashinfer_variable",
    "to_flashmask",
]
