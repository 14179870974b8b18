"""PyTorch FlexAttention: a ``BlockMask`` for every head of one layer, built from our block CSR.

FULL blocks go to ``full_kv_num_blocks``/``full_kv_indices`` (the kernel skips the ``mask_mod``
there), PARTIAL blocks to ``kv_num_blocks``/``kv_indices`` (the kernel applies the ``mask_mod``).
Nothing evaluates the token grid: the lists come straight from the compiled layout.

    cp = patternc.compile("causal & window(512)", n=4096)
    out = torch.compile(flex_attention)(q, k, v, block_mask=cp.to_block_mask(0))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from patternc.lang import identifier

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

    from patternc.compiled import CompiledPattern
    from patternc.lower.node import Lowered

__all__ = ["head_mask_mod", "layer_mask_mod", "to_block_mask"]


def to_block_mask(cp: CompiledPattern, layer: int = 0, device: str = "cpu") -> BlockMask:
    """A ``BlockMask`` of shape ``(1, heads, n, n)`` for ``layer``, with ``BLOCK_SIZE = (bq, bk)``,
    built on ``device`` (``BlockMask.to`` would not move the ``mask_mod``'s lookup tables).

    Key-side tables are ``(1, heads, nbq, nbk)`` int32, each row padded with zeros past its count:
    FlexAttention reads the number of key blocks from the last dimension (compiled kernels assert
    that it covers ``n``; ``BlockMask.to_dense`` indexes by it), so they are dense in blocks, as
    ``create_block_mask``'s are, never in tokens. The query-side tables (the backward's) are the
    transpose of our CSR, also built here: torch's own transposition argsorts every block row.

    >>> bm = to_block_mask(patternc.compile("causal & window(64)", n=1000, block=64), 0)
    >>> bm.shape, bm.BLOCK_SIZE
    ((1, 1, 1000, 1000), (64, 64))
    """
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    cp.node(layer, 0)  # refuses a layer outside the stack before allocating anything
    grid, heads = cp.grid, cp.heads
    kv_num = np.zeros((2, 1, heads, grid.nbq), np.int32)  # [PARTIAL, FULL] x (1, H, nbq)
    kv_idx = np.zeros((2, 1, heads, grid.nbq, grid.nbk), np.int32)
    q_num = np.zeros((2, 1, heads, grid.nbk), np.int32)
    q_idx = np.zeros((2, 1, heads, grid.nbk, grid.nbq), np.int32)
    first_head: dict[Lowered, int] = {}
    for h in range(heads):
        node = cp.node(layer, h)
        if node in first_head:  # heads with the same bound pattern share one layout: copy it
            for array in (kv_num, kv_idx, q_num, q_idx):
                array[:, 0, h] = array[:, 0, first_head[node]]
            continue
        first_head[node] = h
        layout = cp.layout(layer, h)
        rows, cols = layout.rows(), layout.indices
        for kind, chosen in enumerate((~layout.full, layout.full)):
            _fill_lists(rows[chosen], cols[chosen], kv_num[kind, 0, h], kv_idx[kind, 0, h])
            by_col = np.argsort(cols[chosen], kind="stable")  # stable: rows stay sorted per column
            _fill_lists(cols[chosen][by_col], rows[chosen][by_col], q_num[kind, 0, h], q_idx[kind, 0, h])
    kv_num, kv_idx, q_num, q_idx = (torch.from_numpy(a).to(device) for a in (kv_num, kv_idx, q_num, q_idx))
    return BlockMask(
        seq_lengths=(cp.nq, cp.n),  # a query range: row r is query first_query + r
        kv_num_blocks=kv_num[0], kv_indices=kv_idx[0],
        full_kv_num_blocks=kv_num[1], full_kv_indices=kv_idx[1],
        q_num_blocks=q_num[0], q_indices=q_idx[0],
        full_q_num_blocks=q_num[1], full_q_indices=q_idx[1],
        BLOCK_SIZE=cp.block,
        mask_mod=layer_mask_mod(cp, layer, device=device),
    )


def _fill_lists(owner: np.ndarray, member: np.ndarray, num: np.ndarray, idx: np.ndarray) -> None:
    """Per-owner counts ``num`` and member lists ``idx[owner, :num]`` from pairs sorted by owner,
    members ascending within each owner (CSR rows, or their transpose)."""
    num[:] = np.bincount(owner, minlength=len(num))
    start = np.cumsum(num, dtype=np.int64) - num
    idx[owner, np.arange(len(owner)) - start[owner]] = member


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
    runs: list[list[int]] = []
    for h in heads:
        if runs and runs[-1][1] == h - 1:
            runs[-1][1] = h
        else:
            runs.append([h, h])
    return "_".join(f"{a}" if a == b else f"{a}to{b}" for a, b in runs)
