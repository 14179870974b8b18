"""Which path computes the block-sparse kernel's calls: the user's choice, or measured on the machine.

CPUs differ: on some, bfloat16 matmuls run several times faster than float32 ones while SDPA's
fused CPU kernel gains little from bfloat16; on others bfloat16 matmuls crawl. So for bfloat16
inputs on CPU, ``auto`` times one representative call of the ``fused`` and the ``bf16`` path, the
forward and the backward apart, and keeps the faster of each. The measurement runs once per CPU
model, torch version, thread count and head dimension (about 0.1-0.3 s), and is cached on disk next
to ``patternc.measure``'s results (``$PATTERNC_CACHE_DIR``, else ``~/.cache/patternc/cost``).

The choice, first match wins:

- the ``path`` argument of ``block_sparse_attention``;
- the environment variable ``PATTERNC_KERNEL_PATH``;
- ``auto``: on CPU, the measured choice for bfloat16 inputs and ``fused`` for the others; off CPU,
  ``math``.

``fused`` off CPU means ``math`` (SDPA's fused kernel with a log-sum-exp is CPU-only). ``bf16``
computes any input in bfloat16 (the opt-in for float32 inputs); ``math`` is the unfused oracle.

>>> resolve_paths("auto", torch.bfloat16, torch.device("cpu"), head_dim=64)  # doctest: +SKIP
KernelPaths(forward='fused', backward='fused', work=torch.bfloat16)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from patternc.cost import cache_dir, cpu_model, write_json
from patternc.errors import KernelInputError
from patternc.kernels.attend import PATHS, accumulator
from patternc.kernels.masks import CallMask

__all__ = ["CHOICES", "PATH_ENV", "KernelPaths", "PathTimes", "measure_paths", "resolve_paths"]

PATH_ENV = "PATTERNC_KERNEL_PATH"
CHOICES = ("auto", "fused", "bf16", "math")
# the timed call: 4 (batch x heads) x 4 rows of 128 queries against 512 keys each, a band's shape
_PROBE = (4, 4, 128, 512)
_ROUNDS = 5  # timed rounds after one warm-up; each round runs the four calls in turn


@dataclass(frozen=True, slots=True)
class KernelPaths:
    """The path of the forward's calls, of the backward's, and the dtype both compute in."""

    forward: str
    backward: str
    work: torch.dtype


@dataclass(frozen=True, slots=True)
class PathTimes:
    """Median seconds of the representative call on each path, and what they were measured on."""

    fused_forward: float
    bf16_forward: float
    fused_backward: float
    bf16_backward: float
    head_dim: int
    threads: int
    torch_version: str
    cpu: str

    @property
    def forward(self) -> str:
        return "bf16" if self.bf16_forward < self.fused_forward else "fused"

    @property
    def backward(self) -> str:
        return "bf16" if self.bf16_backward < self.fused_backward else "fused"


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
    if chosen == "auto" and cpu and dtype == torch.bfloat16:
        times = measure_paths(head_dim)
        forward, backward = times.forward, times.backward
    elif chosen in ("auto", "fused"):
        forward = backward = "fused" if cpu else "math"
    else:
        forward = backward = chosen
    if "bf16" in (forward, backward):
        work = torch.bfloat16
    elif cpu and dtype == torch.float16:
        work = torch.float32  # float16 runs ~3x slower than float32 in SDPA's CPU kernel
    else:
        work = dtype
    return KernelPaths(forward, backward, work)


def measure_paths(head_dim: int = 64, cache: bool = True) -> PathTimes:
    """Time the ``fused`` and ``bf16`` paths on this CPU (bfloat16), or read the cached result.

    >>> t = measure_paths(64)                       # doctest: +SKIP
    >>> t.forward, t.bf16_forward / t.fused_forward  # doctest: +SKIP
    ('fused', 1.4)
    """
    settings = dict(head_dim=head_dim, threads=torch.get_num_threads(), torch_version=torch.__version__,
                    cpu=cpu_model())
    if not cache:
        return _timed(**settings)
    return _cached(str(cache_dir()), **settings)


@lru_cache(maxsize=8)
def _cached(directory: str, **settings) -> PathTimes:
    """Once per process and cache directory; on disk once per machine and settings."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    path = Path(directory) / f"kernel-paths-{key[:32]}.json"
    try:
        stored = PathTimes(**json.loads(path.read_text()))
        if all(getattr(stored, name) == value for name, value in settings.items()):
            return stored
    except (OSError, ValueError, TypeError):
        pass  # absent, unreadable or hand-edited: measure again and rewrite it
    times = _timed(**settings)
    write_json(path, dataclasses.asdict(times))
    return times


def _timed(head_dim: int, threads: int, torch_version: str, cpu: str) -> PathTimes:
    bh, rows, q_len, k_len = _PROBE
    gen = torch.Generator().manual_seed(0)
    q, grad = (torch.randn(bh, rows, q_len, head_dim, generator=gen).bfloat16() for _ in range(2))
    k, v = (torch.randn(bh, rows, k_len, head_dim, generator=gen).bfloat16() for _ in range(2))
    mask = CallMask(None, None, None, 0, k_len)
    scale = head_dim ** -0.5
    fused, bf16 = PATHS["fused"], PATHS["bf16"]
    with torch.no_grad():
        out, lse = fused.forward(q, k, v, mask, scale)
        lse = lse.to(accumulator(q.dtype))
        calls = {
            "fused_forward": lambda: fused.forward(q, k, v, mask, scale),
            "bf16_forward": lambda: bf16.forward(q, k, v, mask, scale),
            "fused_backward": lambda: fused.backward(grad, q, k, v, out, lse, mask, scale, (True,) * 3),
            "bf16_backward": lambda: bf16.backward(grad, q, k, v, out, lse, mask, scale, (True,) * 3),
        }
        seconds: dict[str, list[float]] = {name: [] for name in calls}
        for round_ in range(_ROUNDS + 1):
            for name, call in calls.items():  # in turns, so a burst of load hits both paths
                start = time.perf_counter()
                call()
                if round_:  # round 0 warms up
                    seconds[name].append(time.perf_counter() - start)
    return PathTimes(**{name: statistics.median(s) for name, s in seconds.items()}, head_dim=head_dim,
                     threads=threads, torch_version=torch_version, cpu=cpu)
