"""The attention a serving configuration gives one layer, and the stack of a model's layers.

Serving configurations describe static sparse attention per layer, never per pair: a layer is full,
sliding (the query and the ``size - 1`` keys before it, plus ``sinks`` first tokens where the engine
keeps sinks) or chunked (its own chunk of ``size`` tokens). Each kind is one expression of the
language, written the one way the reader and the writers share:

>>> [str(LayerAttention(*a)) for a in (("full",), ("sliding", 4096), ("sliding", 508, 4), ("chunked", 8192))]
['causal', 'causal & window(4096)', 'causal & (sink(4) | window(508))', 'causal & chunk(8192)']
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from patternc.errors import ConfigError, brief
from patternc.stack import Override, Stack

__all__ = ["KINDS", "LayerAttention", "layer_stack"]

KINDS = ("full", "sliding", "chunked")


@dataclass(frozen=True, slots=True)
class LayerAttention:
    """One layer's attention: ``kind`` (full, sliding or chunked), ``size`` (the window, keys a
    query sees counting itself; or the chunk length) and ``sinks`` (first tokens every query sees,
    sliding layers only)."""

    kind: str
    size: int | None = None
    sinks: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"a layer's kind is one of {', '.join(KINDS)}, got {brief(self.kind)}")
        if (self.kind == "full") != (self.size is None) or (self.sinks and self.kind != "sliding"):
            raise ConfigError(f"{self.kind} attention with size {brief(self.size)} and {brief(self.sinks)} "
                              "sinks: full layers have no size, sliding and chunked ones do, and only "
                              "sliding layers keep sinks")

    def __str__(self) -> str:
        if self.kind == "full":
            return "causal"
        if self.kind == "chunked":
            return f"causal & chunk({self.size})"
        if self.sinks:
            return f"causal & (sink({self.sinks}) | window({self.size}))"
        return f"causal & window({self.size})"

    def describe(self) -> str:
        """``sliding (window 4,096 + 4 sinks)``, for messages."""
        if self.kind == "full":
            return "full"
        what = "window" if self.kind == "sliding" else "chunk"
        return f"{self.kind} ({what} {self.size:,}" + (f" + {self.sinks} sinks)" if self.sinks else ")")

    def pairs(self, n: int) -> int:
        """Causal pairs the layer lets a query read at length ``n`` (one head)."""
        if self.kind == "full":
            return n * (n + 1) // 2
        if self.kind == "chunked":
            whole, rest = divmod(n, self.size)
            return whole * self.size * (self.size + 1) // 2 + rest * (rest + 1) // 2
        w, s = min(self.size, n), self.sinks
        window = w * (w + 1) // 2 + (n - w) * w  # min(q + 1, w) keys for each query q
        # the sinks outside query q's window: min(s, t) for t = q - w + 1 = 1 .. n - w
        m = n - w
        outside = m * (m + 1) // 2 if m <= s else s * (s + 1) // 2 + (m - s) * s
        return window + outside


def layer_stack(layers: list[LayerAttention], heads: int, kv_heads: int | None = None,
                description: str = "") -> Stack:
    """The stack running ``layers[l]`` on every head of layer ``l``: the commonest expression as the
    default, each run of consecutive other layers as one override.

    >>> s = layer_stack([LayerAttention("sliding", 64)] * 2 + [LayerAttention("full")], heads=4)
    >>> s.default, s.overrides
    ('causal & window(64)', (Override(expr='causal', layers=(2, 3), heads=None),))
    """
    texts = [str(layer) for layer in layers]
    default = Counter(texts).most_common(1)[0][0]  # ties: the first layer's kind
    rules, start = [], 0
    for l in range(1, len(texts) + 1):
        if l == len(texts) or texts[l] != texts[start]:
            if texts[start] != default:
                rules.append(Override(texts[start], layers=(start, l)))
            start = l
    return Stack(default=default, layers=len(layers), heads=heads, causal=True, overrides=tuple(rules),
                 kv_heads=kv_heads, description=description)
