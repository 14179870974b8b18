"""Which path computes the block-sparse kernel's calls: the user's choice, or measured on the machine.

CPUs differ: on some, bfloat16 matmuls run several times faster than float32 ones while SDPA's
fused CPU kernel gains little from bfloat16; on others bfloat16 matmuls crawl, or the fused
kernel's backward runs slower in bfloat16 than in float32. So for bfloat16 inputs on CPU,
``auto`` times one representative piece of work on each candidate, ``fused`` (SDPA's fused
kernel in bfloat16), ``fused_fp32`` (the same kernel on float32 copies) and ``bf16`` (bfloat16
matmuls), the forward and the backward apart, and keeps the fastest of each if it beats ``fused``
by 10% (``MARGIN``). The measurement runs
once per CPU model, torch version, thread count and head dimension (a few hundred ms), and is
cached on disk beside ``patternc.measure``'s results, in ``kernel-paths/`` under
``$PATTERNC_CACHE_DIR`` (else ``~/.cache/patternc/cost``).

The choice, first match wins:

- the ``path`` argument of ``block_sparse_attention``;
- the environment variable ``PATTERNC_KERNEL_PATH``;
- ``auto``: on CPU, the measured choice for bfloat16 inputs, ``fused_fp32`` for float16 (SDPA's
  CPU kernel runs float16 ~3x slower than float32) and ``fused`` for float32 and float64; off CPU,
  ``math``.

``fused`` and ``fused_fp32`` off CPU mean ``math`` (SDPA's fused kernel with a log-sum-exp is
CPU-only). ``bf16`` computes any input in bfloat16 (the opt-in for float32 inputs); ``math`` is the
unfused oracle, in float32 (float64 kept).

>>> import torch
>>> cpu = torch.device("cpu")
>>> resolve_paths("auto", torch.float16, cpu, head_dim=64)  # doctest: +NORMALIZE_WHITESPACE
KernelPaths(forward='fused_fp32', backward='fused_fp32',
            forward_work=torch.float32, backward_work=torch.float32)
>>> resolve_paths("bf16", torch.float32, cpu, head_dim=64).forward_work  # the opt-in for float32 inputs
torch.bfloat16
>>> resolve_paths("fused", torch.float32, torch.device("meta"), head_dim=64).forward  # off CPU
'math'

``resolve_paths("auto", torch.bfloat16, cpu, 64)`` gives what ``measure_paths(64)`` found on this machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from patternc.errors import KernelInputError
from patternc.kernels.call_paths import PATHS
from patternc.kernels.masks import CallMask
from patternc.machine import cache_dir, cpu_model, write_json

__all__ = ["CHOICES", "PATH_ENV", "KernelPaths", "PathTimes", "measure_paths", "resolve_paths"]

PATH_ENV = "PATTERNC_KERNEL_PATH"
CHOICES = ("auto", *PATHS)
CANDIDATES = ("fused", "fused_fp32", "bf16")  # what ``auto`` measures for bfloat16 inputs on CPU
# the timed work: 4 (batch x heads) x 4 rows of 128 queries, each against its own 640 keys (a
# window of 512 at block 128), run in calls of the size each path runs them in the kernel
_PROBE = (4, 4, 128, 640)
_ROUNDS = 3  # timed rounds after one warm-up; each round runs every candidate in turn
MARGIN = 0.9  # another path replaces ``fused`` when the probe runs it in under 90% of the time


@dataclass(frozen=True, slots=True)
class KernelPaths:
    """The path of the forward's calls and of the backward's, and the dtype each computes in."""

    forward: str
    backward: str
    forward_work: torch.dtype
    backward_work: torch.dtype


@dataclass(frozen=True, slots=True)
class PathTimes:
    """Seconds of the representative work on each candidate path, forward and backward (the
    fastest of the rounds: load on a shared machine only ever slows a round down), and what they
    were measured on."""

    forward_seconds: dict[str, float]
    backward_seconds: dict[str, float]
    head_dim: int
    threads: int
    torch_version: str
    cpu: str

    @property
    def forward(self) -> str:
        return _fastest(self.forward_seconds)

    @property
    def backward(self) -> str:
        return _fastest(self.backward_seconds)


def _fastest(seconds: dict[str, float]) -> str:
    """The fastest candidate, if it beats ``fused`` (SDPA's own kernel, the default) by ``MARGIN``:
    the probe is small, a shared machine noisy, and a narrow win there can be a loss in the kernel."""
    best = min(seconds, key=seconds.__getitem__)
    return best if seconds[best] < MARGIN * seconds["fused"] else "fused"


def resolve_paths(path: str | None, dtype: torch.dtype, device: torch.device, head_dim: int) -> KernelPaths:
    """The paths for inputs of ``dtype`` on ``device``; ``path`` None reads ``$PATTERNC_KERNEL_PATH``."""
    if path is None:
        chosen, where = os.environ.get(PATH_ENV, "").strip() or "auto", f"${PATH_ENV}"
    else:
        chosen, where = path, "path"
    if chosen not in CHOICES:
        raise KernelInputError(f"block_sparse_attention: {where} is {chosen!r}, not a compute path; "
                               f"choose from {', '.join(CHOICES)}")
    cpu = device.type == "cpu"
    if not cpu and chosen != "bf16":
        forward = backward = "math"  # SDPA's fused kernel with a log-sum-exp is CPU-only
    elif chosen != "auto":
        forward = backward = chosen
    elif dtype == torch.bfloat16:
        times = measure_paths(head_dim)
        forward, backward = times.forward, times.backward
    else:
        forward = backward = "fused_fp32" if dtype == torch.float16 else "fused"
    return KernelPaths(forward, backward, _work(forward, dtype), _work(backward, dtype))


def _work(path: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype ``path`` computes inputs of ``dtype`` in."""
    return PATHS[path].work or dtype


def measure_paths(head_dim: int = 64, cache: bool = True) -> PathTimes:
    """Time the candidate paths on this CPU for bfloat16 inputs, or read the cached result.

    Measuring takes about a second; what the seconds decide, shown on times of one machine:

    >>> t = PathTimes(forward_seconds={"fused": 0.010, "fused_fp32": 0.014, "bf16": 0.008},
    ...               backward_seconds={"fused": 0.025, "fused_fp32": 0.023, "bf16": 0.054},
    ...               head_dim=64, threads=2, torch_version="2.13.0+cpu", cpu="AMD EPYC")
    >>> t.forward, t.backward  # bf16 beats fused by over 10% (MARGIN); fused_fp32 by less: fused kept
    ('bf16', 'fused')
    """
    settings = dict(head_dim=head_dim, threads=torch.get_num_threads(), torch_version=torch.__version__,
                    cpu=cpu_model())
    if not cache:
        return _timed(**settings)
    return _cached(str(cache_dir()), **settings)


@lru_cache(maxsize=8)
def _cached(directory: str, **settings) -> PathTimes:
    """Once per process and cache directory; on disk once per machine and settings."""
    # the probe and the candidates are part of the key: changing them measures afresh
    keyed = {**settings, "probe": _PROBE, "candidates": CANDIDATES}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    path = Path(directory) / "kernel-paths" / f"{key[:32]}.json"  # apart from measure's files
    stored = _read(path, settings)
    if stored is not None:
        return stored
    times = _timed(**settings)
    write_json(path, dataclasses.asdict(times))
    return times


def _read(path: Path, settings: dict) -> PathTimes | None:
    """The stored times for these settings, or None when absent, unreadable or hand-edited (then
    the paths are measured again and the file rewritten)."""
    try:
        stored = PathTimes(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    complete = set(stored.forward_seconds) == set(stored.backward_seconds) == set(CANDIDATES)
    same = all(getattr(stored, name) == value for name, value in settings.items())
    return stored if complete and same else None


def _timed(head_dim: int, threads: int, torch_version: str, cpu: str) -> PathTimes:
    bh, rows, q_len, k_len = _PROBE
    gen = torch.Generator().manual_seed(0)
    q, grad = (torch.randn(bh, rows, q_len, head_dim, generator=gen) for _ in range(2))
    k, v = (torch.randn(bh, rows, k_len, head_dim, generator=gen) for _ in range(2))
    # a window's band: query i (token k_len - q_len + i) reads the keys less than k_len - q_len behind
    behind = torch.arange(q_len)[:, None] + (k_len - q_len) - torch.arange(k_len)[None, :]
    allowed = (behind >= 0) & (behind < k_len - q_len)  # (q_len, k_len)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, -math.inf)
    scale = head_dim ** -0.5

    def probe(name: str, backward: bool):
        """The probe's rows in calls of the size the path runs in the kernel (``call_scores``),
        on inputs in the dtype it computes in."""
        path, work = PATHS[name], _work(name, torch.bfloat16)
        x = [t.to(work) for t in (q, k, v, grad)]
        mask = CallMask(allowed, additive.to(work), None, 0, k_len)
        with torch.no_grad():
            out, lse = PATHS["fused"].forward(x[0], x[1], x[2], mask, scale)
        step = max(1, min(rows, path.call_scores // (bh * q_len * k_len)))
        views = [(slice(None), slice(r, r + step)) for r in range(0, rows, step)]
        if backward:
            return lambda: [path.backward(x[3][i], x[0][i], x[1][i], x[2][i], out[i], lse[i], mask, scale,
                                          (True,) * 3) for i in views]
        return lambda: [path.forward(x[0][i], x[1][i], x[2][i], mask, scale) for i in views]

    calls = {(direction, name): probe(name, direction == "backward")
             for direction in ("forward", "backward") for name in CANDIDATES}
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
    with torch.no_grad():
        for round_ in range(_ROUNDS + 1):
            for key, call in calls.items():  # in turns, so a burst of load hits every candidate
                start = time.perf_counter()
                call()
                if round_:  # round 0 warms up
                    seconds[key].append(time.perf_counter() - start)
    best = {key: min(s) for key, s in seconds.items()}
    return PathTimes(forward_seconds={name: best["forward", name] for name in CANDIDATES},
                     backward_seconds={name: best["backward", name] for name in CANDIDATES},
                     head_dim=head_dim, threads=threads, torch_version=torch_version, cpu=cpu)
