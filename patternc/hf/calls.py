"""Which keys and queries of an attention call are real tokens, and the sequences that makes.

transformers builds each forward's attention mask through the mask function registered for the
attention implementation; ours, ``key_roles``, builds no ``(S, T)`` mask at all. It returns None
when every key slot is a real token and the call's queries are the last slots (no padding, a
dynamic cache), else a small ``KeyRoles`` tensor: per batch row and key slot, whether the slot
holds a real token (not padding, and already in the cache) and whether it is one of the call's
query slots. It is 4-d, ``(B, 1, 1, T)``, so that transformers passes it on unchanged as a
prepared mask (generation with a static cache builds the mask before the forward).

``sequences`` turns a call into ``Sequences``: the batch rows that are one sequence each of the same
shape, ``keys`` real tokens of which the last ``queries`` are this call's queries. Padding is
removed: the pattern applies to each sequence's own tokens in order (the k-th real token is
position k), so a left-padded batch gives each row what the sequence alone would get (as
``generate()``'s position ids count tokens), and a padding key is never read. A padding query
gets 0.

>>> sequences(None, batch=2, queries=1, slots=9)   # doctest: +SKIP
[Sequences(keys=9, queries=1, rows=None, key_slots=None, query_slots=None)]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from patternc.errors import ModelError

__all__ = ["KEY", "QUERY", "KeyRoles", "Sequences", "key_roles", "sequences"]

KEY = 1  # the slot holds a real token: not padding, already written to the cache
QUERY = 2  # the slot is one of the call's query slots (the call computes its output)

Tensor = torch.Tensor


class KeyRoles(torch.Tensor):
    """``(B, 1, 1, T)`` uint8 of ``KEY`` and ``QUERY`` bits, recognised by the attention function."""


def key_roles(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset=0,
              attention_mask: Tensor | None = None, device="cpu", **kwargs) -> KeyRoles | None:
    """transformers' mask function for the ``patternc`` attention (``AttentionMaskInterface``).

    ``attention_mask`` is the 2-d padding mask (B, tokens so far), True for real tokens; key slot j
    of the call is token ``kv_offset + j`` and query i is token ``q_offset + i``.
    """
    q_offset, kv_offset = int(q_offset), int(kv_offset)  # a static cache gives tensors
    slots = torch.arange(kv_offset, kv_offset + kv_length, device=device)  # (T,) token of each slot
    written = slots < q_offset + q_length  # a static cache has slots not yet written
    real = written.expand(batch_size, kv_length)
    if attention_mask is not None:
        padding = attention_mask.to(device=device, dtype=torch.bool)
        real = real & padding[:, slots.clamp(max=padding.shape[-1] - 1)] & (slots < padding.shape[-1])
    if bool(real.all()) and q_offset + q_length == kv_offset + kv_length:
        return None
    query = (slots >= q_offset) & (slots < q_offset + q_length)  # (T,)
    roles = real.to(torch.uint8) * KEY + query.to(torch.uint8) * QUERY  # (B, T)
    return roles[:, None, None, :].as_subclass(KeyRoles)


@dataclass(frozen=True, slots=True)
class Sequences:
    """Batch rows that hold one sequence each of ``keys`` real tokens, the last ``queries`` of them
    the call's queries. ``rows`` (G,): which batch rows (None: all, in order); ``key_slots`` (G, keys):
    the slot of each real token; ``query_slots`` (G, queries): the query slot (0..S-1) of each real
    query; both None when the rows have no padding."""

    keys: int
    queries: int
    rows: Tensor | None = None
    key_slots: Tensor | None = None
    query_slots: Tensor | None = None

    def gather(self, x: Tensor, slots: Tensor | None) -> Tensor:
        """The group's rows of ``x`` (B, H, T, d), its real slots only: (G, H, len, d)."""
        if self.rows is not None:
            x = x.index_select(0, self.rows.to(x.device))
        if slots is None:
            return x
        index = slots.to(x.device)[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3])
        return torch.gather(x, 2, index)


def sequences(mask, batch: int, queries: int, slots: int, positions: Tensor | None = None) -> list[Sequences]:
    """The call's sequences, from what arrived as ``attention_mask``.

    ``mask``: None (no padding: every row is ``slots`` tokens, its last ``queries`` the queries), our
    ``KeyRoles``, or a 2-d padding mask (B, slots) from code that bypassed the mask function.
    ``positions`` (the model's position ids, if it passes them) is checked: a row of packed sequences
    (positions that restart) is refused, and so is a cache that lost keys (a sliding-window cache).
    """
    if mask is None:
        _check_positions(positions, None, queries, slots)
        return [Sequences(slots, queries)]
    if isinstance(mask, KeyRoles):
        roles = mask.as_subclass(torch.Tensor)[:, 0, 0, :].cpu()  # (B, T)
        real = (roles & KEY).bool()
        query_cols = torch.nonzero((roles[0] & QUERY).bool()).flatten()
    elif isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape == (batch, slots):
        real = mask.bool().cpu()
        query_cols = torch.arange(slots - queries, slots)
    else:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ModelError(f"a sparsified model takes a padding mask (batch, tokens) as attention_mask, got "
                         f"{shape}: the pattern decides which keys each query reads; combine a mask of "
                         "your own into the pattern instead")
    if len(query_cols) != queries or (queries and int(query_cols[-1] - query_cols[0]) != queries - 1):
        raise ModelError(f"the call's {queries} queries are not {queries} consecutive key slots of {slots}")
    start = int(query_cols[0]) if queries else slots
    if bool(real[:, start + queries:].any()):
        raise ModelError("a real token follows the call's queries in the cache: patternc.hf needs the "
                         "queries to be the latest tokens (a decoder's cache)")
    _refuse_holes(real)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row in range(batch):
        m, s = int(real[row].sum()), int(real[row, start:start + queries].sum())
        if s:  # a row of padding only computes nothing: its outputs stay 0
            groups[(m, s)].append(row)
    out = []
    for (m, s), rows in groups.items():
        if m == slots and s == queries:  # no padding in these rows
            key_slots = query_slots = None
        else:
            key_slots = torch.stack([torch.nonzero(real[r]).flatten() for r in rows])  # (G, m)
            query_slots = torch.stack([torch.nonzero(real[r, start:start + queries]).flatten()
                                       for r in rows])  # (G, s)
        for r in rows:
            _check_positions(positions, r, s, slots, real[r, start:start + queries])
        which = None if len(rows) == batch else torch.tensor(rows)
        out.append(Sequences(m, s, which, key_slots, query_slots))
    return out


def _refuse_holes(real: Tensor) -> None:
    """Each row's real tokens must be one run of slots (padding on the left or the right only): a
    row with padding between real tokens is not one sequence the pattern can be applied to."""
    count = real.sum(dim=1)  # (B,)
    first = real.int().argmax(dim=1)
    last = real.shape[1] - 1 - real.flip(1).int().argmax(dim=1)
    holed = torch.nonzero((count > 0) & (last - first + 1 != count)).flatten()
    if len(holed):
        row = int(holed[0])
        hole = int(first[row]) + int(torch.nonzero(~real[row, int(first[row]):]).flatten()[0])
        raise ModelError(f"batch row {row} has padding between real tokens (attention_mask is 0 at slot "
                         f"{hole}, with real tokens on both sides): a sparsified model takes one sequence "
                         "per row, padded on the left or the right only; remove the gap, or pass the pieces "
                         "as separate rows")


def _check_positions(positions: Tensor | None, row: int | None, queries: int, slots: int,
                     real_queries: Tensor | None = None) -> None:
    """The position ids of a row's real queries must count up by one (no packed sequences), and after
    a cache none may reach past the call's key slots (the cache evicted keys: positions count every
    token)."""
    if positions is None or queries == 0:
        return
    if row is None:
        pos = positions.cpu()  # (B or 1, S)
    else:
        pos = positions[row if positions.shape[0] > 1 else 0].cpu()[real_queries]  # (s,)
    if queries > 1 and bool((pos.diff(dim=-1) != 1).any()):
        raise ModelError("the position ids restart inside a row (packed sequences): a pattern applies to "
                         "one sequence per row; pass the sequences as separate rows, with padding")
    last = int(pos.max())
    if queries < slots and last >= slots:  # queries < slots: keys come from a cache
        raise ModelError(f"a query at position {last:,} meets only {slots:,} key slots: the cache dropped "
                         "keys (a sliding-window or chunked cache layer), and a pattern needs every key "
                         "kept: use the cache sparsify sets up (DynamicCache() without the model's config)")
