"""FlexAttention, ``torch.compile``'d once per process and shared by every caller (``attend``'s
``flex`` backend, benchmarks, tests); a call that would train on CPU, where FlexAttention has no
backward, is refused before compiling (``check_flex``)."""

from __future__ import annotations

import torch

from patternc.kernels.inputs import check_flex

__all__ = ["compiled_flex"]

_FLEX = None  # torch.compile(flex_attention), built on first use and shared by every call


def compiled_flex():
    """``flex_attention`` compiled once per process: compiling costs seconds, recompiles are cached
    by torch per block shape and mask_mod. A call that would train where FlexAttention has no
    backward (CPU) is refused first (``check_flex``), whoever calls it."""
    global _FLEX
    if _FLEX is None:
        import torch._dynamo.config as dynamo
        from torch.nn.attention.flex_attention import flex_attention

        # each pattern's mask_mod and each shape is a new graph; past the default limit of 8,
        # dynamo silently falls back to eager flex, which is ~100x slower on CPU
        dynamo.recompile_limit = max(dynamo.recompile_limit, 256)
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _checked_flex


def _checked_flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    check_flex(query, key, value)
    return _FLEX(query, key, value, *args, **kwargs)
