"""The limits that keep every request bounded in time and memory, each checked before the work.

A request past a limit is refused with a ``PatternSizeError`` that names the request, its size,
the limit and what to change, before anything of that size is allocated. The limits sit far
above what real models use (a 1M-token sequence of 128-token blocks, 128 layers x 128 heads) and
far below what would exhaust a machine; ``docs/language.md`` lists them for users.

>>> require(3 * 2**30, MAX_REACH_BYTES, "bytes of state", "use a larger block")  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
patternc.errors.PatternSizeError: bytes of state: 3,221,225,472 is over the limit of ...; use a larger block
"""

from __future__ import annotations

from patternc.errors import PatternSizeError

__all__ = [
    "DENSE_LIMIT",
    "LAYOUT_LIMIT",
    "MAX_BLOCK_PAIRS",
    "MAX_CONFIG_BYTES",
    "MAX_GRAPH_EDGES",
    "MAX_HEADS",
    "MAX_INDEX_BYTES",
    "MAX_LAYOUT_FILE_BYTES",
    "MAX_LOWER_BYTES",
    "MAX_N",
    "MAX_OVERRIDES",
    "MAX_REACH_BYTES",
    "MAX_STACK_BYTES",
    "MAX_TOTAL_BLOCKS",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "require",
]

DENSE_LIMIT = 2**28  # booleans of a dense token mask (256 MiB): above it, use a block-sparse export
LAYOUT_LIMIT = 2**25  # int64 elements of a dense block grid, to_dense_blocks (256 MiB)
MAX_N = 2**31 - 1  # tokens: kernels index tokens with int32
MAX_HEADS = 2**16  # layers x heads of one stack (128 x 128 is 2**14)
MAX_OVERRIDES = 2**12  # override rules of one stack (one per (layer, head) of a 64 x 64 model)
MAX_BLOCK_PAIRS = 2**22  # bq x bk: a block's token mask is evaluated whole (2048 x 2048)
# Peak bytes of lowering one layout, estimated before enumerating (``lowering_bytes``): dense causal at
# 1M tokens in 128-token blocks is 3.5 GiB; it also keeps a layout's blocks far below int32's 2**31.
MAX_LOWER_BYTES = 2**32
MAX_TOTAL_BLOCKS = 2**28  # stored blocks over the distinct layouts of one compile (~1.3 GB of CSR)
MAX_REACH_BYTES = 2**31  # bits of reachability state (token-exact: n^2 / 8; block bounds: nb^2 / 8)
# Edges of a layered graph (CompiledPattern.graph): networkx keeps ~300 bytes per edge (a data dict and
# two adjacency entries), so 2**22 edges is ~1.3 GiB and several seconds to build.
MAX_GRAPH_EDGES = 2**22
MAX_LAYOUT_FILE_BYTES = 2**31  # a layout file: MAX_TOTAL_BLOCKS blocks at 5 bytes, row pointers, header
MAX_CONFIG_BYTES = 2**24  # a model's config.json (hub configs are kilobytes; some carry label maps)
MAX_STACK_BYTES = 2**20  # a stack file, or the stack stored in a layout file, is configuration
MAX_YAML_DEPTH = 32  # nesting of a stack file (a stack is 4 deep)
MAX_YAML_NODES = 2**15  # YAML nodes of a stack file, aliases expanded (no alias bombs)
MAX_INDEX_BYTES = 2**32  # bytes of the index tables one kernel export builds (BlockMask, FA4, FlashMask)


def require(size: int, limit: int, what: str, hint: str) -> None:
    """Refuse ``size`` above ``limit``: ``what`` names the unit and the request, ``hint`` the way out."""
    if size > limit:
        raise PatternSizeError(f"{what}: {size:,} is over the limit of {limit:,}; {hint}")
