"""The tiny decoder-only transformer whose attention is exactly the compiled pattern.

Every layer and head attends under its own boolean mask from ``CompiledPattern.to_dense`` at the
proxy length: SDPA with a ``(H, n, n)`` mask per layer, because FlexAttention has no backward on
CPU and at proxy lengths the dense mask is small (256 x 256 bytes per head). Rotary position
embeddings give every head relative positions for free, which is what a short-range head needs to
learn "the token before me" quickly; learned absolute positions slow the recall tasks down by
hundreds of steps.

A query with no allowed key (possible: ``causal & window(4) - diagonals([0])`` at q = 0) attends
to nothing and outputs 0, as FlexAttention does: its mask row is opened on the diagonal so that
softmax stays finite (no NaN forward or backward) and the output is then zeroed.

>>> model = TinyTransformer(vocab=129, masks=masks_of(cp), cfg=ModelConfig())   # doctest: +SKIP
>>> logits = model(tokens)  # (B, n) -> (B, n, vocab)                          # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search.config import ModelConfig

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["TinyTransformer", "masks_of"]


def masks_of(cp: CompiledPattern) -> torch.Tensor:
    """The exact token masks of every layer and head: ``(L, H, n, n)`` bool."""
    return torch.from_numpy(np.ascontiguousarray(cp.to_dense()))


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of ``x`` (B, H, n, d) by the position angles ``cos, sin`` (n, d/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, heads: int, mask: torch.Tensor):
        super().__init__()
        self.heads, self.head_dim = heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * heads * cfg.head_dim, bias=False)
        self.out = nn.Linear(heads * cfg.head_dim, cfg.d_model, bias=False)
        has_key = mask.any(-1)  # (H, n)
        diagonal = torch.eye(mask.shape[-1], dtype=torch.bool)
        # rows with no key are opened on the diagonal (finite softmax) and zeroed after
        # 4-d (1, H, n, n): SDPA takes its fused CPU kernel; a 3-d per-head mask falls back to the math
        # path, 5x slower forward and backward (torch 2.13)
        opened = mask | (~has_key[..., None] & diagonal)
        self.register_buffer("mask", opened[None], persistent=False)  # (1, H, n, n)
        self.register_buffer("keep", has_key[None, :, :, None].float(), persistent=False)  # (1, H, n, 1)
        self.zero_rows = not bool(has_key.all())

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, n, hd)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)  # (B, H, n, hd)
        if self.zero_rows:
            y = y * self.keep
        return self.out(y.transpose(1, 2).reshape(B, n, -1))  # (B, n, d_model)


class Block(nn.Module):
    """Pre-norm residual block: attention under one layer's masks, then an MLP."""

    def __init__(self, cfg: ModelConfig, heads: int, mask: torch.Tensor):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg, heads, mask)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        hidden = cfg.mlp_ratio * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token embedding, one block per layer of ``masks`` (L, H, n, n), final norm, tied-free head.

    Depth and heads are the pattern's; width, head size and MLP ratio are ``cfg``'s.
    """

    def __init__(self, vocab: int, masks: torch.Tensor, cfg: ModelConfig):
        super().__init__()
        if cfg.head_dim % 2:
            raise ValueError(f"model.head_dim must be even (rotary embeddings pair dimensions), got "
                             f"{cfg.head_dim}")
        L, H, n, _ = masks.shape
        self.n = n
        self.embed = nn.Embedding(vocab, cfg.d_model)
        self.embed_previous = nn.Embedding(vocab + 1, cfg.d_model)  # id `vocab`: before the start
        self.blocks = nn.ModuleList(Block(cfg, H, masks[layer]) for layer in range(L))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab, bias=False)
        half = cfg.head_dim // 2
        freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
        angles = torch.arange(n, dtype=torch.float32)[:, None] * freqs  # (n, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.n:
            raise ValueError(f"the model's masks are for n = {self.n}, got sequences of {tokens.shape[-1]}")
        previous = F.pad(tokens[:, :-1], (1, 0), value=self.embed_previous.num_embeddings - 1)  # (B, n)
        x = self.embed(tokens) + self.embed_previous(previous)  # (B, n, d_model)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        return self.head(self.norm(x))  # (B, n, vocab)
