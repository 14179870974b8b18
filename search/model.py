"""The tiny decoder-only transformer whose attention is exactly the compiled pattern.

Every layer and head attends under its own layout through ``patternc.nn.sparse_attention``: our
block-sparse kernel on CPU (forward and backward, so a training step costs what the pattern
costs), compiled FlexAttention with our BlockMask on CUDA, or SDPA with the exact dense mask where
that is cheaper: on CPU below ``KERNEL_FROM`` tokens, where the dense mask is small and one fused
call beats the kernel's per-run calls (measured on the project's 2-core machine: n = 128, 4 heads
of 16, fwd + bwd 7 ms dense against 22 ms in blocks; at n = 2,048, 270 ms against 79 ms). Every
backend is held to the dense mask by the tests, so the choice changes speed, never accuracy.

Rotary position embeddings give every head relative positions for free, which is what a
short-range head needs to learn "the token before me" quickly; learned absolute positions slow the
recall tasks down by hundreds of steps. A query with no allowed key attends to nothing and outputs
0, as FlexAttention does.

Only the outputs at ``rows`` may be asked for (``model(tokens, rows)``): the last layer then computes
its queries, attention and MLP at those positions alone, under the same exact pattern rows (keys and
values still come from every position). A task that asks its questions at a few positions (majority,
hops: 4 of 256) trains about 1.5x as fast; the numbers are those of the full forward pass.

Each position's input also holds the token before it (docs/search.md, "Tasks and the accuracy
signal", says why), so a layer reaches one token further back than its pattern:

>>> cp = patternc.compile("causal & window(4)", n=32)  # each query sees itself and the 3 keys before it
>>> _ = torch.manual_seed(0)
>>> model = TinyTransformer(vocab=40, pattern=cp, cfg=ModelConfig(d_model=16, head_dim=4, heads=1))
>>> tokens = torch.randint(40, (1, 32), generator=torch.Generator().manual_seed(0))  # (B, n)
>>> logits = model(tokens)  # (B, n, vocab)
>>> logits.shape
torch.Size([1, 32, 40])
>>> changed = tokens.clone()
>>> changed[0, 0] = (tokens[0, 0] + 1) % 40
>>> [bool((model(changed)[0, i] != logits[0, i]).any()) for i in range(8)]  # which outputs token 0 reaches
[True, True, True, True, True, False, False, False]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from patternc.nn import sparse_attention
from search.config import ModelConfig
from search.errors import ConfigError

if TYPE_CHECKING:
    from patternc import CompiledPattern

__all__ = ["KERNEL_FROM", "TinyTransformer", "attention_backend"]

KERNEL_FROM = 512  # tokens from which the CPU trains through the block-sparse kernel


def attention_backend(choice: str, n: int, device: torch.device) -> str:
    """The ``patternc.nn`` backend for ``model.attention``: ``auto`` is SDPA with the dense mask on a
    CPU below ``KERNEL_FROM`` tokens, else the device's sparse kernel.

    >>> cpu = torch.device("cpu")
    >>> attention_backend("auto", 128, cpu), attention_backend("auto", 1024, cpu)
    ('sdpa', 'kernel')
    """
    if choice != "auto":
        return choice
    if device.type == "cpu":
        return "sdpa" if n < KERNEL_FROM else "kernel"
    return "flex"


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of ``x`` (B, H, n, d) by the position angles ``cos, sin`` (n, d/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, pattern: CompiledPattern, layer: int):
        super().__init__()
        self.heads, self.head_dim = pattern.heads, cfg.head_dim
        self.pattern, self.layer = pattern, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * self.heads * cfg.head_dim, bias=False)
        self.out = nn.Linear(self.heads * cfg.head_dim, cfg.d_model, bias=False)
        self.backend = cfg.attention

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, n, hd)
        k = rotary(k, cos, sin)
        if rows is None:
            q = rotary(q, cos, sin)
            backend = attention_backend(self.backend, n, x.device)
            y = sparse_attention(q, k, v, self.pattern, self.layer, backend=backend)  # (B, H, n, hd)
        else:
            q = rotary(q[:, :, rows], cos[rows], sin[rows])  # (B, H, r, hd)
            y = sparse_attention(q, k, v, self.pattern, self.layer, rows=rows)  # (B, H, r, hd)
        return self.out(y.transpose(1, 2).reshape(B, y.shape[2], -1))  # (B, n or r, d_model)


class Block(nn.Module):
    """Pre-norm residual block: attention under one layer of the pattern, then an MLP."""

    def __init__(self, cfg: ModelConfig, pattern: CompiledPattern, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg, pattern, layer)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        hidden = cfg.mlp_ratio * cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden), nn.GELU(), nn.Linear(hidden, cfg.d_model))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n, d_model) -> (B, n, d_model), or (B, r, d_model) at positions ``rows`` only."""
        attended = self.attn(self.norm1(x), cos, sin, rows)
        x = (x if rows is None else x[:, rows]) + attended
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token embedding, one block per layer of ``pattern``, final norm, tied-free head.

    Depth and heads are the pattern's; width, head size and MLP ratio are ``cfg``'s.
    """

    def __init__(self, vocab: int, pattern: CompiledPattern, cfg: ModelConfig):
        super().__init__()
        if cfg.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even (rotary embeddings pair dimensions), got "
                             f"{cfg.head_dim}")
        self.n = n = pattern.n
        self.embed = nn.Embedding(vocab, cfg.d_model)
        self.embed_previous = nn.Embedding(vocab + 1, cfg.d_model)  # id `vocab`: before the start
        self.blocks = nn.ModuleList(Block(cfg, pattern, layer) for layer in range(pattern.layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab, bias=False)
        half = cfg.head_dim // 2
        freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float32) / half)
        angles = torch.arange(n, dtype=torch.float32)[:, None] * freqs  # (n, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, n, vocab) for tokens (B, n); with ``rows`` (r,) positions, (B, r, vocab) there."""
        if tokens.shape[-1] != self.n:
            raise ValueError(f"the model's pattern is for n = {self.n}, got sequences of {tokens.shape[-1]}")
        previous = F.pad(tokens[:, :-1], (1, 0), value=self.embed_previous.num_embeddings - 1)  # (B, n)
        x = self.embed(tokens) + self.embed_previous(previous)  # (B, n, d_model)
        *early, last = self.blocks
        for block in early:
            x = block(x, self.cos, self.sin)
        x = last(x, self.cos, self.sin, rows)  # (B, n or r, d_model)
        return self.head(self.norm(x))  # (B, n or r, vocab)
