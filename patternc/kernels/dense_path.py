"""Never slower than dense: whether a layout's forward runs as the block walk or as one SDPA call
over the layout's exact mask, by a cost model measured once per machine.

The walk's time grows with the scores it computes and with its calls: each call is a kernel launch
and a log-sum-exp store or merge, and on a shared machine's busy cores a call costs up to
milliseconds whatever its size. One masked SDPA call computes all ``n x n`` scores, with no call
overhead beyond its own. So a short sequence cut into many calls can cost several times dense
attention (a sink and a window at 512 tokens: 5.7x, issue 26), while the same pattern at 8k wins.

The model: ``walk = per_score * scores + per_call * calls`` (both from the layout's forward plan)
against ``dense = per_dense_score * batch * heads * n * n``; SDPA runs when ``dense < MARGIN *
walk``. Its three constants come from timing the walk on two probe layouts (few large calls, many
small ones) and masked SDPA, in turns, the fastest of ``_ROUNDS`` (load only ever slows a round),
once per CPU model, thread count, torch version, head size, dtype and ``REVISION``, cached on disk
in ``kernel-dense/`` under ``$PATTERNC_CACHE_DIR`` (else ``~/.cache/patternc/cost``).
``attend`` asks only for layouts whose mask it keeps with the pattern (``ROW_MASK_ELEMENTS``
booleans: one SDPA call, no mask rebuilt per call), which in practice means short sequences.

What the constants decide, on one machine's figures (a call costs as much as 2M scores there):

>>> m = WalkModel(per_score=2e-10, per_call=4e-4, per_dense_score=2.5e-10, head_dim=64, dtype="float32",
...               threads=2, torch_version="2.13.0+cpu", cpu="Intel Xeon")
>>> m.dense_is_cheaper(scores=1.5e7, calls=12, dense_scores=8 * 512 * 512)  # 5.3 ms of walk, 0.5 ms dense
True
>>> m.dense_is_cheaper(scores=1.5e8, calls=10, dense_scores=8 * 8192 * 8192)  # a window at 8k
False
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from patternc.kernels.call_paths import PATHS
from patternc.kernels.inputs import dtype_name
from patternc.kernels.masked_sdpa import masked_sdpa
from patternc.kernels.paths import resolve_paths
from patternc.kernels.plan import partial_kinds, segments
from patternc.kernels.reference import SCORE_BUDGET, block_sparse_attention
from patternc.machine import cache_dir, cpu_model, write_json

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["MARGIN", "REVISION", "WalkModel", "dense_is_cheaper", "measure_walk", "walk_work"]

MARGIN = 0.9  # SDPA replaces the walk when the model puts it under 90% of the walk's time
REVISION = 1  # raised whenever the walk or the probe changes: older models are measured afresh
# the probe: batch x heads, n and block of the probe layouts: every block in one call (2M scores) and
# random blocks in many small calls, which separate the cost of a score from that of a call
_PROBE = (8, 512, 32, ("causal | ~causal", "random(2, seed=1)"))
_ROUNDS = 3  # timed rounds after one warm-up; each round times every probe in turn


@dataclass(frozen=True, slots=True)
class WalkModel:
    """Seconds per score and per call of the block walk, per score of masked dense SDPA, and
    what they were measured on."""

    per_score: float
    per_call: float
    per_dense_score: float
    head_dim: int
    dtype: str
    threads: int
    torch_version: str
    cpu: str

    def walk_seconds(self, scores: float, calls: int) -> float:
        return self.per_score * scores + self.per_call * calls

    def dense_is_cheaper(self, scores: float, calls: int, dense_scores: float) -> bool:
        """Whether masked SDPA over ``dense_scores`` beats a walk of ``calls`` over ``scores``."""
        return self.per_dense_score * dense_scores < MARGIN * self.walk_seconds(scores, calls)


def walk_work(cp: CompiledPattern, layer: int, batch: int, heads: int, budget: int) -> tuple[float, int]:
    """(scores, calls) of the forward walk over layer ``layer`` in calls of at most ``budget``
    scores: every distinct head layout's plan, for ``batch x`` its query heads (``heads`` of them
    when the pattern has one head).

    >>> walk_work(patternc.compile("causal & window(256)", n=1024, block=128), 0, 1, 8, 1 << 30)
    (2752512.0, 3)
    """
    groups: dict[object, int] = {}
    for h in range(cp.heads):
        node = cp.node(layer, h)
        groups[node] = groups.get(node, 0) + (heads if cp.heads == 1 else 1)
    bq, bk = cp.block
    scores, calls = 0.0, 0
    for node, count in groups.items():
        head = next(h for h in range(cp.heads) if cp.node(layer, h) == node)
        bh = batch * count
        plan = segments(cp, layer, head, max(1, budget // (bh * bq * bk)))
        seen = np.concatenate([partial_kinds(cp, layer, head)[1].any(1).sum(-1), [bk]])  # [-1]: FULL
        for seg in plan.segments:  # cut into calls as ``reference._calls`` cuts them
            k_len = seg.k_len  # a gathered call reads only the columns its queries see
            if seg.gather is not None and seg.kinds is not None:
                k_len = min(k_len, int(seen[list(seg.kinds)].sum()))
            scores += bh * seg.rows * seg.q_len * k_len
            calls += math.ceil(seg.rows / max(1, budget // (bh * seg.q_len * seg.k_len)))
    return scores, calls


def dense_is_cheaper(cp: CompiledPattern, layer: int, batch: int, heads: int, head_dim: int,
                     dtype: torch.dtype, budget: int) -> bool:
    """Whether this machine runs layer ``layer`` of ``cp`` faster as masked SDPA than as the walk, for
    CPU inputs (B, H, n, d) of ``dtype`` (float32 or bfloat16; any other dtype walks)."""
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    path = PATHS[resolve_paths(None, dtype, torch.device("cpu"), head_dim).forward]
    budget = min(budget, path.call_scores)
    scores, calls = cp.derived(("walk_work", layer, batch, heads, budget),
                               lambda: walk_work(cp, layer, batch, heads, budget))
    return measure_walk(head_dim, dtype).dense_is_cheaper(scores, calls, batch * heads * cp.n * cp.n)


def measure_walk(head_dim: int = 64, dtype: torch.dtype = torch.float32, cache: bool = True) -> WalkModel:
    """The walk's cost model on this CPU, measured (about a second) or read from the cache."""
    settings = dict(head_dim=head_dim, dtype=dtype_name(dtype), threads=torch.get_num_threads(),
                    torch_version=torch.__version__, cpu=cpu_model())
    if not cache:
        return _timed(**settings)
    return _cached(**settings)


@lru_cache(maxsize=8)
def _cached(**settings) -> WalkModel:
    """Once per process (the machine does not change under it: a test's fresh cache directory does
    not probe again); on disk once per machine and settings."""
    keyed = {**settings, "probe": _PROBE, "revision": REVISION}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / "kernel-dense" / f"{key[:32]}.json"
    stored = _read(path, settings)
    if stored is not None:
        return stored
    model = _timed(**settings)
    write_json(path, {**dataclasses.asdict(model), "revision": REVISION})
    return model


def _read(path: Path, settings: dict) -> WalkModel | None:
    """The stored model for these settings, or None when absent, unreadable, of another revision or
    hand-edited (then it is measured again and the file rewritten)."""
    try:
        data = json.loads(path.read_text())
        revision = data.pop("revision")
        stored = WalkModel(**data)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    same = revision == REVISION and all(getattr(stored, name) == value for name, value in settings.items())
    constants = (stored.per_score, stored.per_call, stored.per_dense_score)
    finite = all(math.isfinite(x) and x >= 0 for x in constants)
    return stored if same and finite else None


def _timed(head_dim: int, dtype: str, threads: int, torch_version: str, cpu: str) -> WalkModel:
    import patternc  # the package imports nothing of patternc.kernels: compile only

    heads, n, block, specs = _PROBE
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen).to(getattr(torch, dtype)) for _ in range(3))
    probes = [patternc.compile(spec, n, block=block) for spec in specs]
    work = [walk_work(cp, 0, 1, heads, SCORE_BUDGET) for cp in probes]
    runs = [lambda cp=cp: block_sparse_attention(q, k, v, cp) for cp in probes]
    every = np.arange(n)
    runs.append(lambda: masked_sdpa(q, k, v, probes[1], 0, None, every))  # its mask is kept: built once
    best = [math.inf] * len(runs)
    with torch.inference_mode():
        for round_ in range(_ROUNDS + 1):
            for i, run in enumerate(runs):  # in turns, so a burst of load hits every probe
                start = time.perf_counter()
                run()
                if round_:  # round 0 warms up and builds the masks
                    best[i] = min(best[i], time.perf_counter() - start)
    (s1, c1), (s2, c2) = work
    # two layouts, two unknowns: t = per_score * scores + per_call * calls
    det = s1 * c2 - s2 * c1
    per_score = (best[0] * c2 - best[1] * c1) / det
    per_call = (s1 * best[1] - s2 * best[0]) / det
    if per_score <= 0 or per_call < 0:  # noise beat the fit: charge everything to the scores
        per_score, per_call = max(best[0] / s1, best[1] / s2), 0.0
    return WalkModel(per_score=per_score, per_call=per_call, per_dense_score=best[2] / (heads * n * n),
                     head_dim=head_dim, dtype=dtype, threads=threads, torch_version=torch_version, cpu=cpu)
