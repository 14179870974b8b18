"""``compile``: a pattern (expression, syntax tree, stack or stack file) at a length and block size
-> ``CompiledPattern``, the exact block-sparse layout of every layer and head.

>>> cp = compile("causal & (window(512) | global(4))", n=8192)
>>> indptr, indices, full = cp.layout(0, 0)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from numbers import Real
from typing import TYPE_CHECKING

import numpy as np

from patternc.errors import PatternError, PatternMeaningError, PatternSizeError, StackError, brief
from patternc.lang import ast, parse
from patternc.layout import INFLATION_WARNING, HeadStats, Layout, future_pair, head_stats, is_causal
from patternc.limits import MAX_BLOCK_PAIRS, MAX_LAYOUT_BLOCKS, MAX_N, MAX_TOTAL_BLOCKS, require
from patternc.lower.bind import Scope, lower
from patternc.lower.grid import FULL, PARTIAL, Grid
from patternc.lower.node import Lowered
from patternc.stack import Stack, as_stack, parse_block

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from patternc.export.bsr import BlockCSR

__all__ = ["DEFAULT_BLOCK", "DENSE_LIMIT", "MAX_N", "CompiledPattern", "PatternStats", "block_shape",
           "compile"]

DEFAULT_BLOCK = 128  # FlexAttention's default tile
_LARGER_BLOCK = "a larger block stores fewer blocks (--block, or block= in Python)"
DENSE_LIMIT = 2**28  # booleans in a dense mask (256 MiB); above this use the block layout


@dataclass(frozen=True, slots=True)
class PatternStats:
    """Statistics of a compiled stack: one ``HeadStats`` per (layer, head), and warnings."""

    n: int
    block: tuple[int, int]
    layers: int
    heads: int
    causal: bool
    per_head: tuple[HeadStats, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "block": list(self.block),
            "layers": self.layers,
            "heads": self.heads,
            "causal": self.causal,
            "per_head": [s.to_dict() for s in self.per_head],
            "warnings": list(self.warnings),
        }


class CompiledPattern:
    """The compiled layout of every (layer, head) of a stack at one length and block shape.

    Heads whose bound pattern is the same share one layout. Everything here is read-only.
    """

    def __init__(self, stack: Stack, n: int, block: tuple[int, int], params: dict[str, int | float],
                 nodes: list[list[Lowered]], layouts: dict[Lowered, Layout]) -> None:
        self.stack = stack
        self.n = n
        self.block = block
        self.params = params
        self.grid = Grid(n, *block)
        self._nodes = nodes
        self._layouts = layouts

    @property
    def layers(self) -> int:
        return self.stack.layers

    @property
    def heads(self) -> int:
        return self.stack.heads

    @cached_property  # undeclared: examines every head once, then remembered
    def causal(self) -> bool:
        """Declared causality of the stack, or, for an undeclared one, whether every head is causal."""
        if self.stack.causal is not None:
            return self.stack.causal
        return all(is_causal(node, layout) for node, layout in self._layouts.items())

    def __repr__(self) -> str:
        bq, bk = self.block
        return (f"CompiledPattern({self.expression(0, 0)!r}, n={self.n}, block=({bq}, {bk}), "
                f"layers={self.layers}, heads={self.heads})")

    # ---- per (layer, head) -------------------------------------------------------------------------

    def _check_index(self, layer: int, head: int) -> None:
        if not (0 <= layer < self.layers and 0 <= head < self.heads):
            raise PatternSizeError(
                f"(layer {layer}, head {head}) is outside this stack of {self.layers} layers x "
                f"{self.heads} heads"
            )

    def node(self, layer: int = 0, head: int = 0) -> Lowered:
        """The lowered pattern of one (layer, head)."""
        self._check_index(layer, head)
        return self._nodes[layer][head]

    def expression(self, layer: int = 0, head: int = 0) -> str:
        """The expression text that applies at (layer, head)."""
        self._check_index(layer, head)
        return self.stack.rule_at(layer, head)[0]

    def block_layout(self, layer: int = 0, head: int = 0) -> Layout:
        """The ``Layout`` (grid and CSR arrays) of one (layer, head)."""
        return self._layouts[self.node(layer, head)]

    def layout(self, layer: int = 0, head: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block CSR of one (layer, head): ``(indptr, indices, full)``, all read-only.

        ``indptr`` (nbq + 1,) int64, ``indices`` (nnz,) int32 key-block columns sorted within each
        row, ``full`` (nnz,) bool: True for FULL blocks, False for PARTIAL ones.
        """
        layout = self.block_layout(layer, head)
        return layout.indptr, layout.indices, layout.full

    def allows(self, q, k, layer: int = 0, head: int = 0) -> np.ndarray:
        """Whether the compiled layout allows ``(q, k)``; vectorised over broadcastable arrays."""
        q, k = np.asarray(q, np.int64), np.asarray(k, np.int64)
        for name, value in (("q", q), ("k", k)):
            if value.size and (value.min() < 0 or value.max() >= self.n):
                raise PatternSizeError(f"{name} must lie in [0, {self.n}), got values up to {value.max()}"
                                       f" and down to {value.min()}")
        layout = self.block_layout(layer, head)
        q, k = np.broadcast_arrays(q, k)
        kind = layout.kind_of(q // self.block[0], k // self.block[1])
        partial = kind == PARTIAL
        out = np.array(kind == FULL)  # an array even for scalar q and k, so it can be assigned to
        if partial.any():
            out[partial] = self.node(layer, head).predicate(q[partial], k[partial])
        return out

    def to_dense(self, layer: int | None = None, head: int | None = None,
                 max_elements: int = DENSE_LIMIT) -> np.ndarray:
        """Dense boolean mask from the layout: ``(n, n)`` for one (layer, head), ``(L, H, n, n)``
        when both are None, ``(H, n, n)`` or ``(L, n, n)`` when one is given."""
        layer_ids = range(self.layers) if layer is None else [layer]
        head_ids = range(self.heads) if head is None else [head]
        size = len(layer_ids) * len(head_ids) * self.n * self.n
        if size > max_elements:
            raise PatternSizeError(
                f"a dense mask of {len(layer_ids)} x {len(head_ids)} x {self.n} x {self.n} = {size:,}"
                f" booleans exceeds the limit of {max_elements:,}; use layout() or a block-sparse"
                " export, or pass max_elements"
            )
        out = np.empty((len(layer_ids), len(head_ids), self.n, self.n), bool)
        for a, l in enumerate(layer_ids):
            for b, h in enumerate(head_ids):
                out[a, b] = self._dense_one(l, h)
        if layer is not None:
            out = out[0]
        if head is not None:
            out = out[..., 0, :, :] if layer is None else out[0]
        return out

    def _dense_one(self, layer: int, head: int) -> np.ndarray:
        layout = self.block_layout(layer, head)
        grid = self.grid
        kinds = np.zeros((grid.nbq, grid.nbk), np.int8)
        kinds[layout.rows(), layout.indices] = np.where(layout.full, FULL, PARTIAL)
        per_token = np.repeat(np.repeat(kinds, grid.bq, axis=0), grid.bk, axis=1)[: self.n, : self.n]
        q = np.arange(self.n)[:, None]
        k = np.arange(self.n)[None, :]
        predicate = np.broadcast_to(self.node(layer, head).predicate(q, k), (self.n, self.n))
        return (per_token == FULL) | ((per_token == PARTIAL) & predicate)

    def mask_mod(self, layer: int = 0, head: int = 0, device: str = "cpu"):
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for one (layer, head).

        It is the exact token predicate; FlexAttention applies it to PARTIAL blocks. Lookup tables
        (``tokens``, ``columns``, ``diagonals``, ``random``) live on ``device``, so ask for the
        device it will run on. For every head of a layer at once, use ``to_block_mask(layer)``.
        """
        from patternc.export.flex import head_mask_mod

        return head_mask_mod(self, layer, head, device)

    # ---- exports (patternc/export/) ------------------------------------------------------------------

    def to_block_mask(self, layer: int = 0, device: str = "cpu") -> BlockMask:
        """A FlexAttention ``BlockMask`` of shape ``(1, heads, n, n)`` for every head of ``layer``:
        FULL blocks as ``full_kv_*``, PARTIAL ones as ``kv_*`` with one ``mask_mod`` exact for every
        head, ``BLOCK_SIZE = (bq, bk)``. Build it on the device it runs on: ``BlockMask.to`` moves
        the block tables but not the ``mask_mod``'s lookup tables.

        >>> flex_attention(q, k, v, block_mask=cp.to_block_mask(3))  # doctest: +SKIP
        """
        from patternc.export.flex import to_block_mask

        return to_block_mask(self, layer, device)

    def to_bsr(self, layer: int = 0, head: int = 0, with_masks: bool = False) -> BlockCSR:
        """Block CSR of one (layer, head) as FlashInfer's ``BlockSparseAttentionWrapper.plan`` takes
        it: int32 ``indptr``/``indices``, ``block``, ``full`` and, with ``with_masks``, a
        ``(nnz, bq, bk)`` token mask per block (see ``patternc.export.bsr``)."""
        from patternc.export.bsr import to_bsr

        return to_bsr(self, layer, head, with_masks)

    def to_block_layout(self, max_elements: int | None = None) -> np.ndarray:
        """int64 ``(L, H, nbq, nbk)``, 1 where a block is stored: DeepSpeed's / Triton's layout.
        Dense in blocks, so refused above 2**25 elements unless ``max_elements`` says otherwise."""
        from patternc.export.layout_array import LAYOUT_LIMIT, to_block_layout

        return to_block_layout(self, LAYOUT_LIMIT if max_elements is None else max_elements)

    def save(self, path: str | os.PathLike) -> None:
        """Write this compiled pattern to a safetensors file that ``patternc.load`` reads back.

        >>> patternc.compile("conf/pattern/longformer.yaml", n=8192).save("lf.safetensors")  # doctest: +SKIP
        """
        from patternc.export.file import save

        save(self, path)

    def stats(self) -> PatternStats:
        """Exact statistics per (layer, head), with a warning where blocking inflates density."""
        causal = self.causal
        by_node: dict[Lowered, HeadStats] = {}
        per_head, warnings = [], []
        for l in range(self.layers):
            for h in range(self.heads):
                node = self._nodes[l][h]
                if node not in by_node:
                    by_node[node] = head_stats(node, self._layouts[node], l, h, causal)
                    s = by_node[node]
                    if s.allowed_pairs and s.inflation > INFLATION_WARNING:
                        bq, bk = self.block
                        warnings.append(
                            f"layer {l} head {h}: {self.expression(l, h)} at block {bq}x{bk} stores "
                            f"{s.inflation:.1f}x the pairs it allows (block density "
                            f"{s.block_density:.3f}, token density {s.token_density:.3f}); "
                            "a smaller block or a coarser pattern wastes less"
                        )
                s = by_node[node]
                per_head.append(HeadStats(**{**s.to_dict(), "layer": l, "head": h}))
        return PatternStats(self.n, self.block, self.layers, self.heads, causal, tuple(per_head),
                            tuple(warnings))


def _check_declared_causal(stack: Stack, nodes: list[list[Lowered]], layouts: dict[Lowered, Layout]) -> None:
    """A stack declared ``causal: true`` must allow no pair with ``k > q``: a decoder exported from
    it would otherwise read the future while every report called it causal."""
    checked: set[Lowered] = set()
    for l, row in enumerate(nodes):
        for h, node in enumerate(row):
            if node in checked:
                continue
            checked.add(node)
            pair = future_pair(node, layouts[node])
            if pair is not None:
                q, k = pair
                text, where = stack.rule_at(l, h)
                raise StackError(f"the stack is declared causal, but layer {l} head {h} ({where}: {text}) "
                                 f"lets query {q} see key {k} > {q}; make the expression causal "
                                 "(causal & ...) or declare causal: false",
                                 where=stack.source or "stack")


def _identifier(text: str) -> str:
    words = {"&": " and ", "|": " or ", "-": " minus ", "~": " not "}
    text = re.sub(r"[&|~]|(?<=[\s)])-(?=\s)", lambda m: words[m.group()], text)
    return re.sub(r"\W+", "_", text).strip("_") or "pattern"


# ---- compile -------------------------------------------------------------------------------------


def compile(spec: str | os.PathLike | ast.Pattern | Stack, n: int,
            block: int | tuple[int, int] | str | None = None,
            params: dict[str, int | float] | None = None) -> CompiledPattern:
    """Compile a pattern at sequence length ``n`` to exact block-sparse layouts.

    ``spec`` is an expression (``"causal & window(512)"``), a syntax tree, a ``Stack``, or the path
    of a stack YAML file (``"conf/pattern/longformer.yaml"``). ``block`` is an int, a pair
    ``(bq, bk)`` or None for the stack's block (else 128). ``params`` binds ``$name`` values over
    the stack's defaults.

    >>> compile("causal & window($w)", n=4096, block=64, params={"w": 256}).layers
    1
    """
    stack = as_stack(spec)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_N:
        raise PatternSizeError(f"n must be an integer in [1, {MAX_N:,}], got {brief(n)}")
    bound = dict(stack.params)
    bound.update(_check_params(params or {}))
    return _compile(stack, int(n), block_shape(stack, int(n), block), tuple(sorted(bound.items())))


def block_shape(stack: Stack, n: int, block: int | tuple[int, int] | str | None = None) -> tuple[int, int]:
    """The ``(bq, bk)`` that ``compile(stack, n, block)`` uses: ``block``, else the stack's, else
    128; a side longer than ``n`` is ``n`` (one block row or column is the same layout).

    >>> block_shape(Stack("causal"), 1000), block_shape(Stack("causal"), 64, (32, 128))
    ((128, 128), (32, 64))
    """
    if block is None:
        block = stack.block or (DEFAULT_BLOCK, DEFAULT_BLOCK)
    bq, bk = (min(size, n) for size in parse_block(block))
    require(bq * bk, MAX_BLOCK_PAIRS, f"token pairs in a block of {bq} x {bk}", "choose a smaller block")
    return bq, bk


def _check_params(params) -> dict[str, int | float]:
    out = {}
    for name, value in dict(params).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise PatternMeaningError(f"parameter name {brief(name)} is not an identifier (write w, not $w)")
        if isinstance(value, bool) or not isinstance(value, Real):
            raise PatternMeaningError(f"parameter {name} must be a number, got {brief(value)}")
        out[name] = int(value) if isinstance(value, (int, np.integer)) else float(value)
    return out


def _used_params(stack: Stack) -> set[str]:
    return {node.id for text in stack.expressions() for node in ast.walk(parse(text))
            if isinstance(node, ast.Param)}


@lru_cache(maxsize=8)  # compiling is a pure function of its inputs (einops caches its recipes)
def _compile(stack: Stack, n: int, block: tuple[int, int], params: tuple) -> CompiledPattern:
    bound = dict(params)
    unused = sorted(set(bound) - _used_params(stack) - {name for name, _ in stack.params})
    if unused:
        raise PatternMeaningError(
            f"unknown parameter '{unused[0]}'; the pattern's parameters are: "
            f"{', '.join(sorted(_used_params(stack))) or 'none'}"
        )
    grid = Grid(n, *block)
    nodes: list[list[Lowered]] = []
    layouts: dict[Lowered, Layout] = {}
    stored = 0
    for l in range(stack.layers):
        row = []
        for h in range(stack.heads):
            text, where = stack.rule_at(l, h)
            scope = Scope(grid, l, h, stack.layers, stack.heads, bound)
            try:
                node = lower(parse(text), grid, scope)
                if node not in layouts:
                    # the estimate comes before any block is built, so a refused size costs nothing
                    require(int(node.size_hint(grid)), MAX_LAYOUT_BLOCKS,
                            f"blocks stored by {text} at n = {n:,} in blocks of {block[0]} x {block[1]} "
                            "(estimated)", _LARGER_BLOCK)
                    layouts[node] = Layout.from_blocks(node.enumerate(grid), grid)
                    stored += layouts[node].nnz
                    require(stored, MAX_TOTAL_BLOCKS, "blocks stored by the distinct layouts of the stack",
                            _LARGER_BLOCK)
            except PatternError as err:
                at = f"{stack.source + ': ' if stack.source else ''}{where} (layer {l}, head {h})"
                raise err.with_source(text, where=at if stack.layers * stack.heads > 1 or stack.source
                                      else None) from None
            row.append(node)
        nodes.append(row)
    if stack.causal:
        _check_declared_causal(stack, nodes, layouts)
    return CompiledPattern(stack, n, block, bound, nodes, layouts)
