"""``compile``: a pattern (expression, syntax tree, stack or stack file) at a length and block size
-> ``CompiledPattern``, the exact block-sparse layout of every layer and head.

>>> cp = compile("causal & (window(512) | global(4))", n=8192)
>>> indptr, indices, full = cp.layout(0, 0)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache, wraps
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from patternc.errors import (
    LayoutFileError,
    PatternError,
    PatternMeaningError,
    PatternSizeError,
    StackError,
    brief,
    check_int,
)
from patternc.lang import ast, parse
from patternc.layout import INFLATION_WARNING, HeadStats, Layout, future_pair, head_stats, is_causal
from patternc.limits import (
    DENSE_LIMIT,
    LAYOUT_LIMIT,
    MAX_BLOCK_PAIRS,
    MAX_LOWER_BYTES,
    MAX_N,
    MAX_TOTAL_BLOCKS,
    require,
)
from patternc.lower.bind import Scope, lower
from patternc.lower.grid import FULL, PARTIAL, Blocks, Grid
from patternc.lower.node import Lowered, lowering_bytes, stored_masks
from patternc.primitives.random_blocks import drawn_on_blocks
from patternc.stack import Stack, as_stack, check_params, params_key, parse_block

if TYPE_CHECKING:
    import networkx as nx
    from torch.nn.attention.flex_attention import BlockMask

    from patternc.export.bsr import BlockCSR
    from patternc.export.fa4 import FA4BlockSparse
    from patternc.export.flashinfer import FlashInferVariable
    from patternc.export.flashmask import FlashMask

__all__ = [
    "DEFAULT_BLOCK",
    "CompiledPattern",
    "PatternStats",
    "block_shape",
    "clear_cache",
    "compile",
    "load",
    "per_pattern",
]

DEFAULT_BLOCK = 128  # FlexAttention's default tile
_LARGER_BLOCK = "a larger block stores fewer blocks (--block, or block= in Python)"


def per_pattern(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(cp, *args)`` made once per compiled pattern and arguments, and kept with the pattern
    (``CompiledPattern.derived``): derived state that dies with it, never a module-level cache keyed
    by the pattern's identity. The arguments must be hashable.

    >>> @per_pattern
    ... def stored(cp, layer):
    ...     return sum(len(cp.layout(layer, h).indices) for h in range(cp.heads))
    >>> cp = patternc.compile("causal", n=256, block=64)
    >>> stored(cp, 0), ("stored", 0) in cp.__dict__["_derived"]
    (10, True)
    """
    name = fn.__qualname__

    @wraps(fn)
    def kept(cp: CompiledPattern, *args: Any, **kwargs: Any) -> Any:
        return cp.derived((name, *args, *sorted(kwargs.items())), lambda: fn(cp, *args, **kwargs))

    return kept


@dataclass(frozen=True, slots=True)
class PatternStats:
    """Statistics of a compiled stack: one ``HeadStats`` per (layer, head), and warnings."""

    n: int
    block: tuple[int, int]
    layers: int
    heads: int
    causal: bool
    per_head: tuple[HeadStats, ...]  # layer by layer, head by head: (l, h) is at l * heads + h
    warnings: tuple[str, ...]

    def at(self, layer: int, head: int) -> HeadStats:
        """The statistics of one (layer, head).

        >>> patternc.compile("conf/pattern/longformer.yaml", n=4096).stats().at(6, 1).nnz
        177
        """
        if not (0 <= layer < self.layers and 0 <= head < self.heads):
            raise PatternSizeError(f"(layer {layer}, head {head}) is outside this stack of {self.layers} "
                                   f"layers x {self.heads} heads")
        return self.per_head[layer * self.heads + head]

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
                 nodes: list[list[Lowered]], layouts: dict[Lowered, Layout], first_query: int = 0,
                 bound_n: int | None = None) -> None:
        self.stack = stack
        self.n = n
        self.block = block
        self.params = MappingProxyType(dict(params))  # read-only: a compiled pattern is shared
        self.first_query = first_query  # queries [first_query, n) against keys [0, n)
        # the n that the terms were bound at: n itself, unless this is a prefix of a longer compile
        self.bound_n = n if bound_n is None else bound_n
        self.grid = Grid(n, *block, first_query)
        self._nodes = nodes
        self._layouts = layouts

    def derived(self, key: tuple, build: Callable[[], Any]) -> Any:
        """What ``build()`` returns, made once per ``key`` for this compiled pattern and kept with it,
        so it dies with the pattern (FlexAttention block masks, SDPA row masks, kernel plans): never
        in a module-level cache keyed by the object's identity. Keys name their kind first.

        >>> cp = patternc.compile("causal", n=64)
        >>> cp.derived(("answer",), lambda: 42), cp.derived(("answer",), lambda: 0)
        (42, 42)
        """
        memo = self.__dict__.setdefault("_derived", {})
        if key not in memo:
            memo[key] = build()
        return memo[key]

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
        rows = f", first_query={self.first_query}" if self.first_query else ""
        rows += f", prefix of n={self.bound_n}" if self.bound_n != self.n else ""
        return (f"CompiledPattern({self.expression(0, 0)!r}, n={self.n}{rows}, block=({bq}, {bk}), "
                f"layers={self.layers}, heads={self.heads})")

    @property
    def nq(self) -> int:
        """Queries compiled: ``n - first_query`` (every query unless a query range was asked for)."""
        return self.n - self.first_query

    def prefix(self, stop: int, first_query: int = 0) -> CompiledPattern:
        """The rows ``[first_query, stop)`` of this causal pattern against the keys ``[0, stop)``: what a
        decoder that serves length ``n`` computes once it holds ``stop`` tokens. Unlike
        ``compile(..., n=stop)``, every term keeps the values it has at this ``n`` (``window(n // 4)``,
        ``random``'s draw), so row ``t`` reads the same keys however many tokens follow it. The block
        rows are this pattern's, cut: ``first_query`` must start one (a multiple of the query block).
        Its ``n`` is ``stop`` and its ``bound_n`` this ``n``.

        >>> cp = compile("causal & window(n // 4)", n=64, block=8)
        >>> cp.prefix(32).to_dense(0, 0)[31].nonzero()[0].tolist()  # 16 keys, as at n = 64: not 8
        [16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]
        >>> cp.prefix(32, first_query=24).to_dense(0, 0).shape  # the rows 24-31 against keys 0-31
        (8, 32)
        """
        bq, bk = self.block
        if self.first_query:
            raise PatternMeaningError(f"prefix() cuts a pattern compiled for every query; this one starts at "
                                      f"query {self.first_query:,}")
        if not self.causal:
            raise PatternMeaningError("prefix() needs a causal pattern: a row of a non-causal one reads keys "
                                      "past the cut")
        stop = check_int(stop, "prefix(): stop", high=self.n, error=PatternSizeError)
        first_query = check_int(first_query, "prefix(): first_query", low=0, high=stop - 1,
                                error=PatternSizeError)
        if first_query % bq:
            raise PatternMeaningError(f"prefix(): first_query must start a query block (a multiple of {bq}), "
                                      f"got {first_query:,}")
        if (stop, first_query) == (self.n, 0):
            return self
        grid = Grid(int(stop), bq, bk, int(first_query))
        first_row = first_query // bq
        layouts = {}
        for node, layout in self._layouts.items():
            indptr = layout.indptr[first_row: first_row + grid.nbq + 1]
            start, end = indptr[0], indptr[-1]
            rows = np.repeat(np.arange(grid.nbq, dtype=np.int64), np.diff(indptr))
            cols, full = layout.indices[start:end].astype(np.int64), layout.full[start:end]
            keep = cols < grid.nbk  # a causal row before the cut reads no key block past it
            kinds = np.where(full[keep], FULL, PARTIAL).astype(np.int8)
            layouts[node] = Layout.from_blocks(Blocks(rows[keep], cols[keep], kinds), grid)
        return CompiledPattern(self.stack, int(stop), self.block, self.params, self._nodes, layouts,
                               int(first_query), bound_n=self.bound_n)

    # ---- per (layer, head) -------------------------------------------------------------------------
    # One convention for every method: ``layer`` and ``head`` select; None means every layer (head)
    # where the result can hold several (``to_dense``, ``to_block_mask``'s heads), and the only one
    # where the result is one head's (``layout``, ``allows``, ``to_bsr``, ...): on a stack with
    # several, saying which is required, never silently 0.

    def at(self, layer: int | None = None, head: int | None = None) -> tuple[int, int]:
        """The ``(layer, head)`` a one-head method reads: None is the only layer (head) there is.

        >>> patternc.compile("causal", n=64).at()
        (0, 0)
        >>> patternc.compile("conf/pattern/longformer.yaml", n=1024).at(layer=3)
        Traceback (most recent call last):
          ...
        patternc.errors.PatternMeaningError: this stack has 12 heads: say which one (head=0..11)
        """
        return (self._index(layer, self.layers, "layers", "layer"),
                self._index(head, self.heads, "heads", "head"))

    def _index(self, value: int | None, count: int, plural: str, name: str) -> int:
        if value is None:
            if count > 1:
                raise PatternMeaningError(f"this stack has {count} {plural}: say which one "
                                          f"({name}=0..{count - 1})")
            return 0
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
            raise PatternSizeError(f"{name} {brief(value)} is outside this stack of {self.layers} layers x "
                                   f"{self.heads} heads")
        return int(value)

    def node(self, layer: int | None = None, head: int | None = None) -> Lowered:
        """The lowered pattern of one (layer, head)."""
        l, h = self.at(layer, head)
        return self._nodes[l][h]

    def expression(self, layer: int | None = None, head: int | None = None) -> str:
        """The expression text that applies at (layer, head)."""
        return self.stack.rule_at(*self.at(layer, head))[0]

    def layout(self, layer: int | None = None, head: int | None = None) -> Layout:
        """The block CSR of one (layer, head), a ``Layout``: ``indptr`` (nbq + 1,) and ``indices``
        (nnz,) int32 key-block columns sorted within each row, ``full`` (nnz,) bool (FULL or PARTIAL),
        all read-only. It unpacks as ``indptr, indices, full = cp.layout(l, h)``.

        >>> indptr, indices, full = patternc.compile("causal", n=256, block=128).layout()
        >>> indptr, indices, full
        (array([0, 1, 3], dtype=int32), array([0, 0, 1], dtype=int32), array([False,  True, False]))
        """
        return self._layouts[self.node(layer, head)]

    def block_layout(self, layer: int | None = None, head: int | None = None) -> Layout:
        """Deprecated: ``layout`` returns the ``Layout`` itself now."""
        warnings.warn("CompiledPattern.block_layout() is deprecated: layout() returns the Layout",
                      DeprecationWarning, stacklevel=2)
        return self.layout(layer, head)

    def allows(self, q, k, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """Whether the compiled layout allows ``(q, k)``; vectorised over broadcastable arrays."""
        q, k = np.asarray(q, np.int64), np.asarray(k, np.int64)
        for name, value, low in (("q", q, self.first_query), ("k", k, 0)):
            if value.size and (value.min() < low or value.max() >= self.n):
                raise PatternSizeError(f"{name} must lie in [{low}, {self.n}), got values up to {value.max()}"
                                       f" and down to {value.min()}")
        layout = self.layout(layer, head)
        q, k = np.broadcast_arrays(q, k)
        kind = layout.kind_of((q - self.first_query) // self.block[0], k // self.block[1])
        partial = kind == PARTIAL
        out = np.array(kind == FULL)  # an array even for scalar q and k, so it can be assigned to
        if partial.any():
            out[partial] = self.node(layer, head).predicate(q[partial], k[partial])
        return out

    def to_dense(self, layer: int | None = None, head: int | None = None,
                 max_elements: int = DENSE_LIMIT) -> np.ndarray:
        """Dense boolean mask: ``(nq, n)`` for one (layer, head) (``nq == n`` unless compiled for a
        query range: row ``r`` is query ``first_query + r``), ``(L, H, nq, n)`` when both are None
        (every layer and head), ``(H, nq, n)`` or ``(L, nq, n)`` when one is given.

        >>> patternc.compile("conf/pattern/longformer.yaml", n=256).to_dense(layer=0).shape
        (12, 256, 256)
        """
        layer_ids = range(self.layers) if layer is None else [self.at(layer, 0)[0]]
        head_ids = range(self.heads) if head is None else [self.at(0, head)[1]]
        size = len(layer_ids) * len(head_ids) * self.nq * self.n
        if size > max_elements:
            raise PatternSizeError(
                f"a dense mask of {len(layer_ids)} x {len(head_ids)} x {self.nq} x {self.n} = {size:,}"
                f" booleans exceeds the limit of {max_elements:,}; use layout() or a block-sparse"
                " export, or pass max_elements"
            )
        out = np.empty((len(layer_ids), len(head_ids), self.nq, self.n), bool)
        for a, l in enumerate(layer_ids):
            for b, h in enumerate(head_ids):
                out[a, b] = self._dense_one(l, h)
        if layer is not None:
            out = out[0]
        if head is not None:
            out = out[..., 0, :, :] if layer is None else out[0]
        return out

    def _dense_one(self, layer: int, head: int) -> np.ndarray:
        """(nq, n): every stored block's token mask, scattered into the block grid."""
        layout, grid = self.layout(layer, head), self.grid
        blocks = np.zeros((grid.nbq, grid.bq, grid.nbk, grid.bk), bool)  # (nbq, bq, nbk, bk)
        blocks[layout.rows(), :, layout.indices, :] = stored_masks(self.node(layer, head), layout)
        return blocks.reshape(grid.nbq * grid.bq, grid.nbk * grid.bk)[: self.nq, : self.n]

    def mask_mod(self, layer: int | None = None, head: int | None = None, device: str = "cpu"):
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for one (layer, head).

        It is the exact token predicate; FlexAttention applies it to PARTIAL blocks. Lookup tables
        (``tokens``, ``columns``, ``diagonals``, ``random``) live on ``device``, so ask for the
        device it will run on. For every head of a layer at once, use ``to_block_mask(layer)``.
        """
        from patternc.export.flex import head_mask_mod

        return head_mask_mod(self, *self.at(layer, head), device)

    # ---- exports (patternc/export/) ------------------------------------------------------------------

    def to_block_mask(self, layer: int | None = None, device: str = "cpu", width: str = "auto",
                      backward: bool = True) -> BlockMask:
        """A FlexAttention ``BlockMask`` of shape ``(1, heads, n, n)`` for every head of ``layer``:
        FULL blocks as ``full_kv_*``, PARTIAL ones as ``kv_*`` with one ``mask_mod`` exact for every
        head, ``BLOCK_SIZE = (bq, bk)``. Build it on the device it runs on: ``BlockMask.to`` moves
        the block tables but not the ``mask_mod``'s lookup tables. ``width``: ``"auto"`` (what the
        device's compiled kernel takes under this torch), ``"compact"``, ``"padded"`` or ``"full"``
        (``patternc.export.widths``); ``backward=False`` leaves out the backward's tables.

        >>> patternc.compile("causal & window(64)", n=1000, block=64).to_block_mask().BLOCK_SIZE
        (64, 64)
        """
        from patternc.export.flex import to_block_mask

        return to_block_mask(self, self.at(layer, 0)[0], device, width, backward)

    def to_bsr(self, layer: int | None = None, head: int | None = None, with_masks: bool = False) -> BlockCSR:
        """Block CSR of one (layer, head) as FlashInfer's ``BlockSparseAttentionWrapper.plan`` takes
        it: int32 ``indptr``/``indices``, ``block``, ``full`` and, with ``with_masks``, a
        ``(nnz, bq, bk)`` token mask per block (see ``patternc.export.bsr``)."""
        from patternc.export.bsr import to_bsr

        return to_bsr(self, *self.at(layer, head), with_masks)

    def to_flashinfer_variable(self, layer: int | None = None, union: bool = False) -> FlashInferVariable:
        """FlashInfer's ``VariableBlockSparseAttentionWrapper.plan`` inputs for ``layer``, one
        partition into whole cells per KV head: ``block_mask_map``, ``block_row_sz``,
        ``block_col_sz`` and ``causal`` (``patternc.export.flashinfer``). Exact, or a
        ``PatternError`` naming a block that whole cells cannot express; a KV group whose heads
        differ is refused unless ``union=True``, whose union is then not exact for those heads.

        >>> patternc.compile("causal & chunk(96)", n=256, block=64).to_flashinfer_variable().causal
        True
        """
        from patternc.export.flashinfer import to_flashinfer_variable

        return to_flashinfer_variable(self, self.at(layer, 0)[0], union)

    def to_flashmask(self, layer: int | None = None, union: bool = False) -> FlashMask:
        """FlashMask's ``startend_row_indices`` (1, kv_heads, n, 1|2|4) and ``causal`` for ``layer``,
        in the fewest values exact for every KV head (``patternc.export.flashmask``); a pattern a
        column's intervals cannot hold is a ``PatternError`` naming the term. A KV group whose heads
        differ is refused unless ``union=True``, whose union is then not exact for those heads.

        >>> patternc.compile("causal & window(3)", n=5).to_flashmask().startend_row_indices[0, 0, :, 0]
        array([3, 4, 5, 5, 5], dtype=int32)
        """
        from patternc.export.flashmask import to_flashmask

        return to_flashmask(self, self.at(layer, 0)[0], union)

    def to_fa4(self, layer: int | None = None) -> FA4BlockSparse:
        """FlashAttention 4's block sparsity for every head of ``layer``: partial and full block
        counts and indices per query block, and ``block_size`` (``patternc.export.fa4``, which says
        the tiles FA4 needs); partial blocks take ``to_block_mask(layer).mask_mod``.

        >>> patternc.compile("causal", n=512, block=128).to_fa4().full_block_cnt
        array([[[0, 1, 2, 3]]], dtype=int32)
        """
        from patternc.export.fa4 import to_fa4

        return to_fa4(self, self.at(layer, 0)[0])

    def to_dense_blocks(self, max_elements: int | None = None) -> np.ndarray:
        """int64 ``(L, H, nbq, nbk)``, 1 where a block is stored: DeepSpeed's / Triton's layout, the
        dense mask of the block grid. Refused above 2**25 elements unless ``max_elements`` says so.

        >>> patternc.compile("causal", n=384, block=128).to_dense_blocks()[0, 0]
        array([[1, 0, 0],
               [1, 1, 0],
               [1, 1, 1]])
        """
        from patternc.export.layout_array import to_dense_blocks

        return to_dense_blocks(self, LAYOUT_LIMIT if max_elements is None else max_elements)

    def to_block_layout(self, max_elements: int | None = None) -> np.ndarray:
        """Deprecated name of ``to_dense_blocks``."""
        warnings.warn("CompiledPattern.to_block_layout() is deprecated: use to_dense_blocks()",
                      DeprecationWarning, stacklevel=2)
        return self.to_dense_blocks(max_elements)

    def save(self, path: str | os.PathLike) -> None:
        """Write this compiled pattern to a safetensors file that ``patternc.load`` reads back.

        >>> patternc.compile("conf/pattern/longformer.yaml", n=8192).save(tmp_path / "lf.safetensors")
        """
        from patternc.export.file import save

        if self.bound_n != self.n:
            raise PatternMeaningError(f"this pattern is a prefix of one compiled at n = {self.bound_n:,}, "
                                      "which a layout file cannot record: save that one")
        save(self, path)

    def graph(self, depth: int | None = None, exact_limit: int | None = None) -> nx.DiGraph:
        """The layered attention graph that ``patternc.reach`` analyses, as a ``networkx.DiGraph``:
        node ``(t, x)`` is position ``x`` after ``t`` layers, an edge ``(t - 1, k) -> (t, q)`` a pair
        some head of that layer allows (``heads`` says which) or the residual ``x -> x``. Tokens up
        to ``exact_limit`` (reach's default), blocks above; ``depth`` layers (default: the stack's,
        more repeat it). See ``patternc.reachability.layered_graph`` and docs/graph.md.

        >>> g = patternc.compile("causal & window(4)", n=64, block=16).graph()
        >>> sorted(g.predecessors((1, 10)))
        [(0, 7), (0, 8), (0, 9), (0, 10)]
        """
        from patternc.reachability.graph import layered_graph  # patternc.reachability imports this module

        return layered_graph(self, depth) if exact_limit is None else layered_graph(self, depth, exact_limit)

    def stats(self) -> PatternStats:
        """Exact statistics per (layer, head), with a warning where blocking inflates density."""
        causal = self.causal
        by_node: dict[Lowered, HeadStats] = {}
        per_head, found = [], []
        for l in range(self.layers):
            for h in range(self.heads):
                node = self._nodes[l][h]
                if node not in by_node:
                    by_node[node] = head_stats(node, self._layouts[node], l, h, causal)
                    s = by_node[node]
                    if s.allowed_pairs and s.inflation > INFLATION_WARNING:
                        bq, bk = self.block
                        found.append(
                            f"layer {l} head {h}: {self.expression(l, h)} at block {bq}x{bk} stores "
                            f"{s.inflation:.1f}x the pairs it allows (block density "
                            f"{s.block_density:.3f}, token density {s.token_density:.3f}); "
                            "a smaller block or a coarser pattern wastes less"
                        )
                s = by_node[node]
                per_head.append(HeadStats(**{**s.to_dict(), "layer": l, "head": h}))
        return PatternStats(self.n, self.block, self.layers, self.heads, causal, tuple(per_head),
                            tuple(found))


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


def load(path: str | os.PathLike) -> CompiledPattern:
    """A compiled pattern from a file written by ``CompiledPattern.save``: the stored stack is
    recompiled and every stored array must equal the recompiled one; any fault is a
    ``LayoutFileError`` naming the file. A file is data from elsewhere (its hash anyone can
    recompute): its sizes are checked against its arrays before anything is recompiled, and the
    recompile is held to the compile limits.

    >>> cp = patternc.compile("causal & window(64)", n=1024)
    >>> cp.save(tmp_path / "w.safetensors")
    >>> patternc.load(tmp_path / "w.safetensors").layout().nnz == cp.layout().nnz
    True
    """
    from patternc.export.file import check_arrays, read, verify

    stored = read(path)
    try:
        grid = _grid(stored.stack, stored.n, stored.block, stored.first_query)
        check_arrays(stored, grid.nbq)  # the header's sizes against the arrays: a forged n costs nothing
        cp = compile(stored.stack, stored.n, block=stored.block, params=stored.params,
                     first_query=stored.first_query)
    except LayoutFileError:
        raise
    except PatternError as err:
        raise LayoutFileError(f"the stored pattern does not compile: {err}", where=stored.path) from None
    verify(cp, stored)
    return cp


# ---- compile -------------------------------------------------------------------------------------


def compile(spec: str | os.PathLike | ast.Pattern | Stack, n: int,
            block: int | tuple[int, int] | None = None,
            params: dict[str, int | float] | None = None, first_query: int = 0) -> CompiledPattern:
    """Compile a pattern at sequence length ``n`` to exact block-sparse layouts.

    ``spec`` is an expression (``"causal & window(512)"``), a syntax tree, a ``Stack``, or the path
    of a stack YAML file (``"conf/pattern/longformer.yaml"``). ``block`` is an int, a pair
    ``(bq, bk)`` or None for the stack's block (else 128). ``params`` binds ``$name`` values over
    the stack's defaults. ``first_query`` compiles only the queries ``[first_query, n)`` against the
    keys ``[0, n)``: exactly those rows of the pattern at length ``n`` (a prefill chunk, a decode
    step), in query blocks that start at ``first_query``.

    >>> compile("causal & window($w)", n=4096, block=64, params={"w": 256}).layers
    1
    >>> compile("causal & window(3)", n=6, first_query=5).to_dense(0, 0).astype(int)  # the decode step
    array([[0, 0, 0, 1, 1, 1]])
    """
    stack = as_stack(spec)
    grid = _grid(stack, n, block, first_query)
    bound = dict(stack.params)
    bound.update(check_params(params or {}))
    pairs = tuple(sorted(bound.items()))
    return _compile(stack, grid.n, (grid.bq, grid.bk), pairs, grid.first, params_key(pairs))


def _grid(stack: Stack, n: int, block, first_query: int) -> Grid:
    """The block grid ``compile(stack, n, block, first_query=...)`` lowers on, its arguments checked."""
    n = check_int(n, "n", high=MAX_N, error=PatternSizeError)
    first_query = check_int(first_query, "first_query", low=0, high=n - 1, error=PatternSizeError)
    return Grid(n, *block_shape(stack, n, block), first_query)


def whole_pattern(cp: object, caller: str, needs: str) -> CompiledPattern:
    """``cp`` when it is a compiled pattern of every query; else ``PatternMeaningError`` naming
    ``caller`` and why it ``needs`` every query (reach, the layered graph and kv follow whole
    sequences through the layers).

    >>> whole_pattern("causal", "kv()", "needs every query")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    patternc.errors.PatternMeaningError: kv() takes a CompiledPattern and works from ..., got str
    """
    if not isinstance(cp, CompiledPattern):
        raise PatternMeaningError(f"{caller} takes a CompiledPattern and works from a CompiledPattern "
                                  f"(patternc.compile makes one), got {type(cp).__name__}")
    if cp.first_query:
        raise PatternMeaningError(f"{caller} {needs}; this pattern is compiled for the queries "
                                  f"[{cp.first_query:,}, {cp.n:,}) only")
    return cp


def block_shape(stack: Stack, n: int, block: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """The ``(bq, bk)`` that ``compile(stack, n, block)`` uses: ``block``, else the stack's, else
    128; a side longer than ``n`` is ``n`` (one block row or column is the same layout).

    >>> block_shape(Stack("causal"), 1000), block_shape(Stack("causal"), 64, (32, 128))
    ((128, 128), (32, 64))
    """
    if block is None:
        block = stack.block or (DEFAULT_BLOCK, DEFAULT_BLOCK)
    elif isinstance(block, str):
        warnings.warn(f"block={block!r}: a string is the command line's form; pass an int or (bq, bk)",
                      DeprecationWarning, stacklevel=3)
    bq, bk = (min(size, n) for size in parse_block(block))
    require(bq * bk, MAX_BLOCK_PAIRS, f"token pairs in a block of {bq} x {bk}", "choose a smaller block")
    return bq, bk


def _used_params(stack: Stack) -> set[str]:
    return {node.id for text in stack.expressions() for node in ast.walk(parse(text))
            if isinstance(node, ast.Param)}


def clear_cache() -> None:
    """Forget the compiles ``compile`` remembers (it keeps the last 8: compiling is a pure function
    of its inputs, as einops caches its recipes); benchmarks call it to time cold compiles.

    >>> clear_cache()
    """
    _compile.cache_clear()


@lru_cache(maxsize=8)
def _compile(stack: Stack, n: int, block: tuple[int, int], params: tuple, first_query: int,
             key: tuple) -> CompiledPattern:
    # ``key`` is ``params_key(params)``, read by the cache alone: ``params`` compare equal across
    # types (10**16 == 1e16) that evaluate differently
    bound = dict(params)
    unused = sorted(set(bound) - _used_params(stack) - {name for name, _ in stack.params})
    if unused:
        raise PatternMeaningError(
            f"unknown parameter '{unused[0]}'; the pattern's parameters are: "
            f"{', '.join(sorted(_used_params(stack))) or 'none'}"
        )
    grid = Grid(n, *block, first_query)
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
                if first_query % block[0] and drawn_on_blocks(node):
                    raise PatternMeaningError(
                        f"random() is drawn per query block of {block[0]} tokens: a query range must start "
                        f"at a multiple of it (first_query = {first_query:,})")
                if node not in layouts:
                    # the estimate comes before any block is built, so a refused size costs nothing
                    require(int(lowering_bytes(node, grid)), MAX_LOWER_BYTES,
                            f"bytes to lower {text} at n = {n:,} in blocks of {block[0]} x {block[1]} "
                            "(estimated peak)", _LARGER_BLOCK)
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
    return CompiledPattern(stack, n, block, bound, nodes, layouts, first_query)
