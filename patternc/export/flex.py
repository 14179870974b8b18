"""PyTorch FlexAttention: a ``BlockMask`` for every head of one layer, built from our block CSR.

FULL blocks go to ``full_kv_num_blocks``/``full_kv_indices`` (the kernel skips the ``mask_mod``
there), PARTIAL blocks to ``kv_num_blocks``/``kv_indices`` (the kernel applies the ``mask_mod``).
Nothing evaluates the token grid: the lists come straight from the compiled layout
(``patternc.export.tables``), as wide as the device's kernel needs (``patternc.export.widths``).

    cp = patternc.compile("causal & window(512)", n=4096)
    out = torch.compile(flex_attention)(q, k, v, block_mask=cp.to_block_mask(0))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from patternc.export.tables import LayerLists, layer_lists
from patternc.export.widths import check_form, table_form
from patternc.lang import identifier
from patternc.limits import MAX_INDEX_BYTES, require
from patternc.stack import index_runs

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from patternc.compiled import CompiledPattern
    from patternc.lower.node import Lowered

__all__ = ["head_mask_mod", "layer_mask_mod", "to_block_mask"]


def to_block_mask(cp: CompiledPattern, layer: int = 0, device: str = "cpu", width: str = "auto",
                  backward: bool = True) -> BlockMask:
    """A ``BlockMask`` of shape ``(1, heads, n, n)`` for ``layer``, with ``BLOCK_SIZE = (bq, bk)``,
    built on ``device`` (``BlockMask.to`` would not move the ``mask_mod``'s lookup tables).

    Key-side tables are ``(1, heads, nbq, w)`` int32, each row zero-padded past its count. ``width``
    chooses ``w`` (``patternc.export.widths``): ``"compact"``, the widest row's count; ``"padded"``,
    ``nbk`` by shape over compact memory (rows overlap past their counts); ``"full"``, ``nbk`` and
    dense, as ``create_block_mask`` makes them; ``"auto"``, what the compiled kernel on ``device``
    needs under the running torch (``table_form``). The query-side tables (the backward's) are the
    transpose of our CSR, as wide as the widest column, built here (torch's own transposition
    argsorts a dense grid); ``backward=False`` leaves them out (FlexAttention then refuses a
    backward pass). Heads with the same bound pattern share one table: a stride-0 head axis when
    every head of the layer does.

    >>> bm = to_block_mask(patternc.compile("causal & window(64)", n=1000, block=64), 0, width="compact")
    >>> bm.shape, bm.BLOCK_SIZE, tuple(bm.kv_indices.shape), tuple(bm.full_kv_indices.shape)
    ((1, 1, 1000, 1000), (64, 64), (1, 1, 16, 2), (1, 1, 16, 1))
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    form = table_form(device) if check_form(width) == "auto" else width
    lists = layer_lists(cp, layer, transposed=backward)
    grid = cp.grid
    _check_size(cp, layer, lists, form)
    heads = torch.from_numpy(lists.heads).to(device)

    def tables(block_lists, full_width: int):
        if block_lists is None:
            return None, None
        num = torch.from_numpy(block_lists.num).to(device)[heads][None]  # (1, H, rows), contiguous
        return num, _head_tables(torch.from_numpy(block_lists.idx).to(device), heads, form, full_width)

    kv_num, kv_idx = tables(lists.partial_kv, grid.nbk)
    full_kv_num, full_kv_idx = tables(lists.full_kv, grid.nbk)
    q_num, q_idx = tables(lists.partial_q, grid.nbq)
    full_q_num, full_q_idx = tables(lists.full_q, grid.nbq)
    return BlockMask(
        seq_lengths=(cp.nq, cp.n),  # a query range: row r is query first_query + r
        kv_num_blocks=kv_num, kv_indices=kv_idx,
        full_kv_num_blocks=full_kv_num, full_kv_indices=full_kv_idx,
        q_num_blocks=q_num, q_indices=q_idx,
        full_q_num_blocks=full_q_num, full_q_indices=full_q_idx,
        BLOCK_SIZE=cp.block,
        mask_mod=layer_mask_mod(cp, layer, device=device),
    )


def _check_size(cp: CompiledPattern, layer: int, lists: LayerLists, form: str) -> None:
    """Refuse, before any tensor is made, tables in ``form`` past ``MAX_INDEX_BYTES``, saying which
    side is large and only the ways out that help: ``width='compact'`` when another form was asked
    and compact fits, ``backward=False`` when the forward's tables fit alone, a larger block always."""
    forward, backward = _table_bytes(cp, lists, form)
    if forward + backward <= MAX_INDEX_BYTES:
        return
    ways = []
    if backward and forward <= MAX_INDEX_BYTES:
        ways.append("backward=False (leaves out the query-side tables; FlexAttention then runs forward only)")
    if form != "compact":
        compact_forward, compact_backward = _table_bytes(cp, lists, "compact")
        if compact_forward + compact_backward <= MAX_INDEX_BYTES:
            ways.append("width='compact' (tables as wide as the widest row, not the grid)")
        elif compact_backward and compact_forward <= MAX_INDEX_BYTES and forward > MAX_INDEX_BYTES:
            ways.append("width='compact' with backward=False")
    ways.append("a larger block (fewer and narrower tables)")
    shared = "one table shared by every head" if _copies(cp, lists, form) == 1 else "a copy per head"
    require(forward + backward, MAX_INDEX_BYTES,
            f"bytes of {form} BlockMask tables for layer {layer} at n = {cp.n:,} ({cp.heads} heads, "
            f"{shared}: {forward:,} key-side for the forward, {backward:,} query-side tables for the "
            "backward)",
            "use " + ", or ".join(ways))


def _copies(cp: CompiledPattern, lists: LayerLists, form: str) -> int:
    """Index tables stored: ``full`` ones per head; the others once when every head shares a layout."""
    return 1 if form != "full" and lists.partial_kv.num.shape[0] == 1 else cp.heads


def _table_bytes(cp: CompiledPattern, lists: LayerLists, form: str) -> tuple[int, int]:
    """Bytes of the key-side (forward) and query-side (backward) tables in ``form``: ``full`` ones are
    ``nbk`` (``nbq``) wide; the others as wide as the widest row (column)."""
    grid, copies = cp.grid, _copies(cp, lists, form)
    sides = []
    for side in (((lists.partial_kv, grid.nbk), (lists.full_kv, grid.nbk)),
                 ((lists.partial_q, grid.nbq), (lists.full_q, grid.nbq))):
        size = 0
        for block_lists, full_width in side:
            if block_lists is not None:
                rows = block_lists.num.shape[1]
                width = full_width if form == "full" else block_lists.width
                size += 4 * rows * (cp.heads + copies * width)  # counts per head, indices per copy
        sides.append(size)
    return sides[0], sides[1]


def _head_tables(distinct, heads, form: str, full_width: int):
    """(1, H, rows, w) index tables in ``form`` from the distinct layouts' (U, rows, width) ones."""
    import torch

    count, rows, width = distinct.shape
    if form == "full":  # dense and contiguous per head, as create_block_mask makes them
        dense = distinct.new_zeros(count, rows, full_width)
        dense[..., :width] = distinct
        return dense[heads][None].contiguous()
    per_head = distinct if count == 1 else distinct[heads]  # (1 or H, rows, width), contiguous
    if form == "compact":
        return per_head.expand(len(heads), rows, width)[None]  # a stride-0 head axis when shared
    # padded: nbk (or nbq) wide by shape, rows `width` apart in memory, so each row's first `width`
    # entries are its own and the rest are the next rows' (never read: kernels stop at the count)
    stored = torch.cat([per_head.reshape(-1), per_head.new_zeros(full_width - width)])
    head_stride = 0 if count == 1 else rows * width
    return stored.as_strided((1, len(heads), rows, full_width), (0, head_stride, width, 1))


def layer_mask_mod(cp: CompiledPattern, layer: int = 0, device: str = "cpu"):
    """One ``mask_mod(b, h, q_idx, kv_idx)`` that is exact for every head of ``layer``.

    FlexAttention calls it with ``h`` a tensor (a vmapped scalar in eager mode, a symbolic value
    when compiled), so heads pick their predicate through a table and ``torch.where``, never a
    Python ``if``. Its ``__name__`` names each expression of the layer with its heads.

    >>> layer_mask_mod(patternc.compile("conf/pattern/longformer.yaml", n=4096), 6).__name__
    'h0to1_causal_and_dilated_256_2_or_global_16__h2to11_causal_and_window_256_or_global_16'
    """
    import torch

    groups: dict[Lowered, list[int]] = {}  # distinct bound pattern -> its heads
    for h in range(cp.heads):
        groups.setdefault(cp.node(layer, h), []).append(h)
    nodes = list(groups)
    group_of_head = torch.zeros(cp.heads, dtype=torch.int32, device=device)  # (H,)
    for index, heads in enumerate(groups.values()):
        group_of_head[heads] = index

    first = cp.first_query  # FlexAttention counts query rows from 0; our predicates use positions

    def per_head(h, q_idx, kv_idx):
        q_idx = q_idx + first
        allowed = nodes[0].predicate(q_idx, kv_idx)
        if len(nodes) > 1:
            group = group_of_head[h]
            for index in range(1, len(nodes)):
                allowed = torch.where(group == index, nodes[index].predicate(q_idx, kv_idx), allowed)
        return allowed

    graph = _traced(per_head, 3, device)

    def mask_mod(b, h, q_idx, kv_idx):
        return graph(h, q_idx, kv_idx)

    mask_mod.__name__ = mask_mod.__qualname__ = _name(cp, layer)
    return mask_mod


def head_mask_mod(cp: CompiledPattern, layer: int = 0, head: int = 0, device: str = "cpu"):
    """A ``mask_mod(b, h, q_idx, kv_idx)`` for one (layer, head): its exact token predicate.

    >>> import torch
    >>> mm = head_mask_mod(patternc.compile("causal & tokens([0, 9])", n=64), 0, 0)
    >>> mm(0, 0, torch.arange(64)[:, None], torch.arange(64)).sum()
    tensor(127)
    """
    node = cp.node(layer, head)
    first = cp.first_query
    graph = _traced(lambda q_idx, kv_idx: node.predicate(q_idx + first, kv_idx), 2, device)

    def mask_mod(b, h, q_idx, kv_idx):
        return graph(q_idx, kv_idx)

    mask_mod.__name__ = mask_mod.__qualname__ = identifier(cp.expression(layer, head))
    return mask_mod


def _traced(fn, arity: int, device: str):
    """``fn`` recorded as a graph of torch ops, with its lookup tables as constant tensors.

    FlexAttention traces its ``mask_mod`` with TorchDynamo even in eager mode, and Dynamo cannot
    follow our predicates into the numpy code (behind ``lru_cache``) that builds the tables of
    ``tokens``, ``columns``, ``diagonals`` and ``random``. Recording the predicate once here, on
    real tensors, runs that code normally and leaves Dynamo only torch ops; the numbers in the
    pattern become literals, so a compiled kernel never sees them as symbolic values either.
    """
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    # distinct (1,)-shaped inputs: make_fx would merge one tensor passed twice into one input,
    # and 1-d indices record table lookups as `aten.index`, valid for any shape FlexAttention uses
    example = [torch.zeros(1, dtype=torch.int32, device=device) for _ in range(arity)]
    return make_fx(fn)(*example)


def _name(cp: CompiledPattern, layer: int) -> str:
    """The layer's expression, or each expression prefixed with its heads: ``h0to3_...__h4to7_...``."""
    by_text: dict[str, list[int]] = {}
    for h in range(cp.heads):
        by_text.setdefault(cp.expression(layer, h), []).append(h)
    if len(by_text) == 1:
        return identifier(next(iter(by_text)))
    return "__".join(f"h{_runs(heads)}_{identifier(text)}" for text, heads in by_text.items())


def _runs(heads: list[int]) -> str:
    """Sorted head indices as runs: [0, 1, 2, 5] -> '0to2_5'."""
    return "_".join(f"{a}" if a == b else f"{a}to{b}" for a, b in index_runs(heads))
