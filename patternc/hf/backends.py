"""The pattern each attention call of a sparsified model computes: the stack at the length the
model serves, and the rows of the call.

A call is one sequence shape of a batch: ``m`` keys, the last ``s`` of them the call's queries
(``s == m``: a whole sequence, a prefill; ``s < m``: a decode step or a chunk after cached keys).
Its pattern is the stack at the length the model serves (``Patterns``): its rows ``[m - s, m)``
against the keys ``[0, m)``, exact, cached. ``patternc.kernels.attend`` then runs it, with the
backend ``sparsify`` was given (``auto``, ``kernel``, ``flex``, ``sdpa``; see
``patternc.kernels.dispatch``).

>>> cp = patterns.rows(served=4096, keys=4096, queries=1)                          # doctest: +SKIP
>>> out = patternc.kernels.attend(q, k, v, cp, layer=0, scale=0.125)               # doctest: +SKIP
"""

from __future__ import annotations

from collections import OrderedDict

import patternc
from patternc.compiled import CompiledPattern
from patternc.errors import ModelError
from patternc.hf.model import ModelShape, non_causal_error
from patternc.stack import Stack

__all__ = ["Patterns"]


class Patterns:
    """The stack at each length the model serves, and the rows its calls compute: the last
    ``cached`` of them (what each needs to run, block masks and row masks, is kept with it).

    A call meets ``keys`` tokens, the last ``queries`` of them its queries, in a model that serves
    ``served`` tokens (a generation's total length, a declared ``max_length``, or the call's own
    length). Its rows are those of the stack compiled at ``served`` (``CompiledPattern.prefix``),
    so row ``t`` reads the same keys whatever follows it.
    """

    def __init__(self, stack: Stack, shape: ModelShape, block: int | tuple[int, int] | None,
                 params: dict[str, int | float] | None, cached: int = 64) -> None:
        self.stack, self.shape, self.block, self.params = stack, shape, block, dict(params or {})
        self.cached = cached
        self._compiled: OrderedDict[tuple[int, int, int], CompiledPattern] = OrderedDict()

    def whole(self, n: int) -> CompiledPattern:
        """Every row at length ``n``."""
        return self.rows(n, n, n)

    def rows(self, served: int, keys: int, queries: int) -> CompiledPattern:
        """At least the last ``queries`` rows of ``keys`` tokens, served at length ``served``: the
        query range starts at a multiple of the query block (``random()`` is drawn per block row, and
        a cut keeps whole block rows), so it may hold a few rows more."""
        bq = patternc.compiled.block_shape(self.stack, served, self.block)[0]
        first = 0 if queries >= keys else (keys - queries) - (keys - queries) % bq
        key = (served, keys, first)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        if served == keys:  # the rows of the pattern at the call's own length, compiled alone
            cp = patternc.compile(self.stack, keys, block=self.block, params=self.params, first_query=first)
            if self.shape.causal and not cp.causal:
                raise self._leak(cp)
        else:
            cp = self.rows(served, served, served).prefix(keys, first)
        self._compiled[key] = cp
        while len(self._compiled) > self.cached:
            self._compiled.popitem(last=False)
        return cp

    def _leak(self, cp: CompiledPattern) -> ModelError:
        from patternc.layout import future_pair

        for l in range(cp.layers):
            for h in range(cp.heads):
                if future_pair(cp.node(l, h), cp.layout(l, h)) is not None:
                    return non_causal_error(self.stack, self.shape, cp.n, l, h)
        return non_causal_error(self.stack, self.shape, cp.n, 0, 0)  # unreachable: cp.causal was False
