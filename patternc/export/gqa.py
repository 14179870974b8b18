"""Grouped-query attention: the query heads that read one KV head, and whether they agree.

A stack's ``kv_heads`` groups its query heads as PyTorch's ``enable_gqa`` does: query head ``h``
reads KV head ``h // (heads // kv_heads)`` (``Stack.kv_group``). Kernels that take one layout per KV
head (FlashInfer's variable block-sparse wrapper, FlashMask) need every head of a group to allow
the same pairs. ``kv_patterns`` gives each KV head's pattern, refusing a group whose heads differ
or, with ``union=True``, taking the union of its heads (then not exact: a head of the group is
computed with pairs its own pattern does not allow). ``mixed_kv_groups`` lists the groups whose
heads differ, for ``patternc check``.

>>> stack = patternc.Stack(default="causal & window(64 * (h // 2 + 1))", heads=4, kv_heads=2)
>>> cp = patternc.compile(stack, 512)
>>> [p.heads for p in kv_patterns(cp, 0)]
[(0, 1), (2, 3)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from patternc.errors import PatternMeaningError
from patternc.layout import Layout
from patternc.lower.algebra import Difference, Union
from patternc.stack import layer_spans

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern
    from patternc.lower.node import Lowered

__all__ = ["KVGroupMismatch", "KVPattern", "kv_patterns", "mixed_kv_groups",
           "query_heads"]


@dataclass(frozen=True, slots=True, eq=False)
class KVPattern:
    """The pattern one KV head serves: its query ``heads``, the bound ``node`` (their union when
    they differ and a union was asked for) and its ``layout``; ``exact`` is False for such a union."""

    kv_head: int
    heads: tuple[int, ...]
    node: Lowered
    layout: Layout
    exact: bool


@dataclass(frozen=True, slots=True)
class KVGroupMismatch:
    """Layer ``layer``'s KV head ``kv_head`` is read by query heads that allow different pairs:
    ``expressions`` pairs each distinct pattern's expression with the heads that allow its pairs
    (an expression in ``h`` may appear twice, bound to different heads)."""

    layer: int
    kv_head: int
    heads: tuple[int, ...]
    expressions: tuple[tuple[str, tuple[int, ...]], ...]

    def describe(self) -> str:
        parts = "; ".join(f"head{'s' if len(hs) > 1 else ''} {layer_spans(hs)}: {text}"
                          for text, hs in self.expressions)
        return (f"layer {self.layer}: KV head {self.kv_head} ({query_heads(self.heads)}) is read "
                f"by heads whose patterns differ ({parts})")

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kv_head": self.kv_head, "heads": list(self.heads),
                "patterns": [{"expression": text, "heads": list(hs)} for text, hs in self.expressions]}


def kv_patterns(cp: CompiledPattern, layer: int, union: bool = False) -> list[KVPattern]:
    """One ``KVPattern`` per KV head of ``layer``. A group whose heads allow different pairs is a
    ``PatternMeaningError`` naming the group and its heads, unless ``union`` asks for their union
    (which is then not exact for those heads)."""
    cp.node(layer, 0)  # refuses a layer outside the stack
    out = []
    for g in range(cp.stack.kv_heads):
        heads = tuple(cp.stack.kv_group(g))
        nodes = [cp.node(layer, members[0]) for members in _classes(cp, layer, heads)]
        if len(nodes) == 1:
            out.append(KVPattern(g, heads, nodes[0], cp.layout(layer, heads[0]), True))
            continue
        if not union:
            raise PatternMeaningError(
                f"{_mismatch(cp, layer, g, heads).describe()}; a per-KV-head export needs one pattern per "
                "group: give the group's heads one pattern, or pass union=True (--union) to export the "
                "union of the group's patterns, which is then not exact")
        node = nodes[0]
        for other in nodes[1:]:
            node = Union(node, other)
        out.append(KVPattern(g, heads, node, Layout.from_blocks(node.enumerate(cp.grid), cp.grid), False))
    return out


def mixed_kv_groups(cp: CompiledPattern) -> tuple[KVGroupMismatch, ...]:
    """Every (layer, KV head) whose query heads allow different pairs (none when kv_heads = heads)."""
    if cp.stack.kv_heads == cp.heads:
        return ()
    found = []
    for layer in range(cp.layers):
        for g in range(cp.stack.kv_heads):
            heads = tuple(cp.stack.kv_group(g))
            if len(_classes(cp, layer, heads)) > 1:
                found.append(_mismatch(cp, layer, g, heads))
    return tuple(found)


def _classes(cp: CompiledPattern, layer: int, heads: tuple[int, ...]) -> list[list[int]]:
    """``heads`` grouped by the pairs they allow. Equal bound nodes allow equal pairs; different
    ones are compared exactly, by the blocks of their symmetric difference."""
    classes: list[list[int]] = []
    for h in heads:
        node = cp.node(layer, h)
        for members in classes:
            seen = cp.node(layer, members[0])
            if node == seen or _same_pairs(cp, node, seen):
                members.append(h)
                break
        else:
            classes.append([h])
    return classes


def _same_pairs(cp: CompiledPattern, a: Lowered, b: Lowered) -> bool:
    grid = cp.grid
    return len(Difference(a, b).enumerate(grid)) == 0 and len(Difference(b, a).enumerate(grid)) == 0


def _mismatch(cp: CompiledPattern, layer: int, g: int, heads: tuple[int, ...]) -> KVGroupMismatch:
    classes = _classes(cp, layer, heads)
    texts = [cp.expression(layer, members[0]) for members in classes]
    # one expression in h bound to different heads: say which binding each class is
    texts = [f"{text} at h = {members[0]}" if texts.count(text) > 1 else text
             for text, members in zip(texts, classes, strict=True)]
    return KVGroupMismatch(layer, g, heads, tuple((text, tuple(members))
                                                  for text, members in zip(texts, classes, strict=True)))


def query_heads(heads) -> str:
    """'query head 3' or 'query heads 0-3'."""
    return f"query head{'s' if len(heads) > 1 else ''} {layer_spans(heads)}"
