"""``measure``: the forward latency of a compiled layout on a kernel, against dense causal SDPA
timed in the same process, cached on disk.

The kernel and the baseline take turns, repeat by repeat, so a burst of load on a shared machine
slows both rather than one; the ratio is the median of the per-repeat ratios, which cancels slow
drifts that the two medians alone would not. Each repeat runs long enough (``MIN_REPEAT_SECONDS``,
by running the pair several times when one run is short) that a scheduler's tick on a busy core is
a small part of it. The spread is kept with the result: the middle half of the per-repeat ratios,
``[ratio_low, ratio_high]``; while it is wider than ``MAX_SPREAD`` of the ratio, another batch of
repeats is timed and pooled, at most ``MAX_ROUNDS`` batches (then the result says how wide it is).
Two costs whose spreads overlap (``Measurement.overlaps``) are not told apart by the measurement.

The cache key is everything the figure depends on: a sha256 of the layer's block CSR (every head)
with ``n`` and the block shape, the shapes, backend, dtype, thread count, torch version and CPU
model (on a GPU, its name) and ``KERNELS_REVISION``. A hit returns the stored result without
building tensors or running any kernel. A cache file that does not parse is ignored and rewritten.
The directory is ``$PATTERNC_CACHE_DIR``, else ``~/.cache/patternc/cost``. On a GPU each repeat is
timed between two ``torch.cuda.synchronize()`` calls, so the figure is the kernel's, not its launch's.

>>> import torch
>>> cp = patternc.compile("causal & window(128)", n=1024)
>>> m = patternc.measure(cp, backend="kernel", dtype=torch.float32, cache=False)
>>> m.backend, m.n, m.block, m.repeats  # m.ratio: our latency / dense causal SDPA's; below 1 is faster
('kernel', 1024, (128, 128), 9)
>>> m.ratio_low <= m.ratio <= m.ratio_high and 1 <= m.rounds <= MAX_ROUNDS  # the spread comes with it
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from patternc.errors import PatternMeaningError, brief, check_int
from patternc.limits import require
from patternc.machine import CACHE_ENV, cache_dir, cpu_model, write_json

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["CACHE_ENV", "KERNELS_REVISION", "MAX_ROUNDS", "MAX_SPREAD", "MIN_REPEAT_SECONDS", "PHASES",
           "Measurement", "cache_dir", "layout_hash", "measure", "resolve_device"]

# Raised whenever a change to patternc's kernels or to how they are timed can change a layout's
# figure, so that results measured the old way are not read back (2: a dense causal layer runs
# SDPA's causal kernel; 3: gathered fixed-place runs, one call per segment, the masked-SDPA fallback,
# repeats of at least MIN_REPEAT_SECONDS re-measured while wider than MAX_SPREAD; 4: a dense causal
# layer checks its output, not its inputs, for a non-finite value).
KERNELS_REVISION = 4
# a repeat at least this long: a scheduler tick (~4 ms) lost to another process on a shared core
# then moves one repeat by a fifth at most, and the median of the repeats by far less
MIN_REPEAT_SECONDS = 0.02
MAX_SPREAD = 0.10  # the middle half of the per-repeat ratios, relative to their median
MAX_ROUNDS = 3  # batches of repeats at most: a machine too busy to agree is reported, never waited on
PHASES = ("prefill", "decode")  # measure(phase=...): the whole sequence, or one decode step


@dataclass(frozen=True, slots=True)
class Measurement:
    """Median forward seconds of ``backend`` and of dense causal SDPA, and the settings."""

    seconds: float  # median over repeats, after warm-up
    baseline_seconds: float  # dense causal SDPA, same shapes, same process, timed in turns
    ratio: float  # median of the repeats' seconds / baseline seconds: below 1 is faster
    ratio_low: float  # the first and third quartiles of the repeats' ratios: the spread
    ratio_high: float
    rounds: int  # batches of ``repeats`` timed (more than 1 when the first was wider than MAX_SPREAD)
    calls_per_repeat: int  # runs of the kernel (and of the baseline) in one timed repeat
    backend: str
    n: int
    block: tuple[int, int]
    layer: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    threads: int
    repeats: int
    warmup: int
    torch_version: str
    cpu: str
    layout_hash: str
    device: str = "cpu"  # "cpu", or the GPU's type and name ("cuda: NVIDIA H200")
    phase: str = "prefill"  # "prefill": the whole sequence; "decode": one step at position context
    context: int | None = None  # decode: the tokens already cached when the step runs
    kernels: int = KERNELS_REVISION  # our kernels' revision: a faster kernel is measured afresh

    @property
    def spread(self) -> float:
        """The middle half of the repeats' ratios, relative to the ratio: 0.04 is +-2%."""
        return (self.ratio_high - self.ratio_low) / self.ratio

    def overlaps(self, other: Measurement) -> bool:
        """Whether the two costs lie within each other's spread: the measurement does not rank them.

        >>> a = Measurement.from_dict({**EXAMPLE, "ratio": 0.40, "ratio_low": 0.39, "ratio_high": 0.42})
        >>> b = dataclasses.replace(a, ratio=0.43, ratio_low=0.41, ratio_high=0.45)
        >>> a.overlaps(b), a.overlaps(dataclasses.replace(b, ratio_low=0.425))
        (True, False)
        """
        return self.ratio_low <= other.ratio_high and other.ratio_low <= self.ratio_high

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "block": list(self.block)}

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        return cls(**{**data, "block": tuple(data["block"])})


EXAMPLE = dict(seconds=0.004, baseline_seconds=0.01, ratio=0.4, ratio_low=0.39, ratio_high=0.42, rounds=1,
               calls_per_repeat=3, backend="kernel", n=8192, block=[128, 128], layer=0, batch=1, heads=8,
               head_dim=64, dtype="float32", threads=2, repeats=9, warmup=2, torch_version="2.13.0+cpu",
               cpu="Intel Xeon", layout_hash="0" * 64)  # a stored result, for the examples


def layout_hash(cp: CompiledPattern, layer: int) -> str:
    """sha256 over ``n``, the block shape and the block CSR of every head of ``layer``."""
    digest = hashlib.sha256(f"n={cp.n};block={cp.block};heads={cp.heads}".encode())
    for h in range(cp.heads):
        for array in cp.layout(layer, h):
            digest.update(array.dtype.str.encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _device_name(device: torch.device) -> str:
    """``cpu``, or the accelerator's type and name (``cuda: NVIDIA H200``): part of the cache key."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def _seconds(run, q, k, v, calls: int = 1) -> float:
    """Seconds of one run of ``run``: ``calls`` runs timed together, divided by ``calls``."""
    gpu = q.device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(q.device)
    start = time.perf_counter()
    for _ in range(calls):
        run(q, k, v)
    if gpu:
        torch.cuda.synchronize(q.device)  # kernels run asynchronously: wait for them to finish
    return (time.perf_counter() - start) / calls


@dataclass(frozen=True, slots=True)
class _Timing:
    seconds: float
    baseline_seconds: float
    ratio: float
    ratio_low: float
    ratio_high: float
    rounds: int
    calls_per_repeat: int


def _timed_in_turns(run, baseline, q, k, v, repeats: int, warmup: int) -> _Timing:
    """Median seconds of ``run`` and ``baseline``, timed alternately (the order flips each repeat,
    so neither always runs on the other's warm cache), the median of the per-repeat ratios and
    their quartiles; batches of ``repeats`` are added while the quartiles are too far apart."""
    with torch.inference_mode():
        warm = [(_seconds(run, q, k, v), _seconds(baseline, q, k, v)) for _ in range(warmup)]
        # the warm-up's last pair says how many runs make a repeat of MIN_REPEAT_SECONDS
        calls = max(1, min(64, math.ceil(MIN_REPEAT_SECONDS / max(min(warm[-1]), 1e-9)))) if warm else 1
        ours, theirs = [], []
        rounds = 0
        while rounds < MAX_ROUNDS:
            rounds += 1
            for i in range(repeats):
                if i % 2:
                    theirs.append(_seconds(baseline, q, k, v, calls))
                    ours.append(_seconds(run, q, k, v, calls))
                else:
                    ours.append(_seconds(run, q, k, v, calls))
                    theirs.append(_seconds(baseline, q, k, v, calls))
            ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
            ratio = statistics.median(ratios)
            low, high = _quartiles(ratios)
            if high - low <= MAX_SPREAD * ratio:
                break
    return _Timing(statistics.median(ours), statistics.median(theirs), ratio, low, high, rounds, calls)


def _quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles (the values themselves when there are fewer than 2)."""
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


def measure(compiled: CompiledPattern, batch: int = 1, heads: int | None = None, head_dim: int = 64,
            backend: str = "kernel", dtype: torch.dtype = torch.bfloat16, layer: int = 0,
            repeats: int = 9, warmup: int = 2, cache: bool = True, device: str = "cpu",
            phase: str = "prefill", context: int | None = None) -> Measurement:
    """Median latency of ``backend`` on layer ``layer`` of ``compiled`` and of dense causal SDPA.

    ``phase="decode"``: one decode step instead, the query at position ``context`` (default
    ``n - 1``) over a ``patternc.kernels.decode.DecodeCache`` that holds what the pattern keeps,
    against dense SDPA decode over all ``context + 1`` cached keys (``backend`` is then the decode
    kernel; the stack's ``kv_heads`` give the cache's heads).

    ``heads`` defaults to the stack's and must equal it, unless the pattern has one head, which
    then applies to every head. Threads are ``torch.get_num_threads()`` at the call, recorded and
    part of the cache key. ``device``: where the kernel and the baseline run (``"cuda"``, ``"cuda:1"``).
    ``repeats`` 9 a batch (more batches while the spread is wide; see the module docstring): on a
    2-core machine at a load average of 7-8 plus one busy core, ten fresh calls at 8k agreed within
    6.7% of their median for a window of n/8 and 9.2% for a sink and a window of 512, but only within
    38% for Sparse Transformer fixed, whose time flips between two levels (``benchmarks/cost_repeat.py``).

    >>> m = measure(patternc.compile("causal & window(256)", n=1024), backend="sdpa", repeats=3, cache=False)
    >>> m.backend, m.n, m.heads, m.dtype
    ('sdpa', 1024, 1, 'bfloat16')
    """
    from patternc.kernels import backend_name, causal_sdpa, prepare

    heads = compiled.heads if heads is None else heads
    if heads != compiled.heads and compiled.heads != 1:
        raise PatternMeaningError(f"heads={heads}, but the pattern has {compiled.heads} heads")
    backend = backend_name(backend, "measure(): backend")
    for name, value, low in (("batch", batch, 1), ("heads", heads, 1), ("head_dim", head_dim, 1),
                             ("repeats", repeats, 1), ("warmup", warmup, 0)):
        check_int(value, f"measure(): {name}", low=low)
    compiled.node(layer, 0)  # a bad layer is refused before anything is hashed
    if phase not in PHASES:
        raise PatternMeaningError(f"measure(): phase must be one of {', '.join(PHASES)}, got {brief(phase)}")
    if phase == "decode":
        context = compiled.n - 1 if context is None else context
        if isinstance(context, bool) or not isinstance(context, int) or not 0 <= context < compiled.n:
            raise PatternMeaningError(f"measure(): context must be an integer in [0, n) = "
                                      f"[0, {compiled.n:,}): the step's query is at position context, "
                                      f"got {brief(context)}")
        if backend != "kernel":
            raise PatternMeaningError(f"measure(phase='decode') runs our decode kernel "
                                      f"(backend='kernel'), got backend={brief(backend)}")
        if heads != compiled.heads:
            raise PatternMeaningError(f"measure(phase='decode'): heads={heads}, but the pattern has "
                                      f"{compiled.heads} heads (a decode cache follows each head's pattern)")
    elif context is not None:
        raise PatternMeaningError("measure(): context is the decode step's position; pass phase='decode'")
    target = resolve_device(device)
    # q, k, v and one output of (batch, heads, n, head_dim), plus the baseline's output
    _require_memory(5 * batch * heads * compiled.n * head_dim * dtype.itemsize, target)
    dtype_name = str(dtype).removeprefix("torch.")
    settings = dict(backend=backend, n=compiled.n, block=compiled.block, layer=layer, batch=batch,
                    heads=heads, head_dim=head_dim, dtype=dtype_name, threads=torch.get_num_threads(),
                    repeats=repeats, warmup=warmup, torch_version=torch.__version__, cpu=cpu_model(),
                    layout_hash=layout_hash(compiled, layer), device=_device_name(target),
                    kernels=KERNELS_REVISION)
    if phase == "decode":  # prefill settings stay as they were, and so do their cached files
        settings.update(phase=phase, context=context)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()
    path = cache_dir() / f"{key[:32]}.json"
    if cache:
        hit = _read(path, settings)
        if hit is not None:
            return hit
    gen = torch.Generator().manual_seed(0)
    if phase == "decode":
        run, baseline, (q, k, v) = _decode_step(compiled, layer, batch, head_dim, dtype, target, context, gen)
    else:
        q, k, v = (torch.randn(batch, heads, compiled.n, head_dim, generator=gen).to(target, dtype)
                   for _ in range(3))
        run, baseline = prepare(backend, compiled, layer, str(target)), lambda q, k, v: causal_sdpa(q, k, v)
    timing = _timed_in_turns(run, baseline, q, k, v, repeats, warmup)
    result = Measurement(**dataclasses.asdict(timing), **settings)
    if cache:
        _write(path, result)
    return result


def _decode_step(cp: CompiledPattern, layer: int, batch: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, context: int, gen: torch.Generator):
    """(run, baseline, (q, k, v)): the step at position ``context`` on a cache filled up to it, and
    dense decode over the whole cache; q (B, H, 1, d), k and v (B, Hkv, context + 1, d)."""
    from patternc.kernels.decode import DecodeCache, dense_decode

    kv_heads = cp.stack.kv_heads
    _require_memory(3 * batch * kv_heads * (context + 1) * head_dim * dtype.itemsize, device)
    q = torch.randn(batch, cp.heads, 1, head_dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(batch, kv_heads, context + 1, head_dim, generator=gen).to(device, dtype)
            for _ in range(2))
    cache = DecodeCache(cp, layer, batch=batch, head_dim=head_dim, dtype=dtype, device=device)
    cache.prefill(k[:, :, :context], v[:, :, :context])
    cache.append(k[:, :, context:], v[:, :, context:])
    gqa = kv_heads != cp.heads
    step, dense = (lambda q, k, v: cache.attend(q)), (lambda q, k, v: dense_decode(q, k, v, enable_gqa=gqa))
    return step, dense, (q, k, v)


def _require_memory(size: int, device: torch.device) -> None:
    """Refuse tensors larger than the device's memory (physical memory on a CPU) before allocating."""
    from patternc.kernels.inputs import device_memory

    what = f"{_device_name(device)} memory" if device.type == "cuda" else "this machine's memory"
    require(size, device_memory(device),
            f"bytes of q, k, v and outputs (batch x heads x n x head_dim) against {what}",
            "lower the batch, heads, head_dim or n")


def resolve_device(device: str, where: str | None = None) -> torch.device:
    """``device`` as a torch device, refused with the reason when it is not usable here; ``where``
    (the config key or option that gave it) starts the message.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu", where="kernel.device")
    Traceback (most recent call last):
      ...
    patternc.errors.PatternMeaningError: kernel.device: device 'tpu' is not a torch device ...
    """
    said = f"{where}: device {device!r}" if where else f"device {device!r}"
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PatternMeaningError(f"{said} is not a torch device (cpu, cuda, cuda:1): {exc}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise PatternMeaningError(f"{said}: this torch build or machine has no CUDA GPU "
                         f"(torch.cuda.is_available() is False)")
    if target.type not in ("cpu", "cuda"):
        raise PatternMeaningError(f"{said}: patternc's kernels and proxy training run on cpu or cuda only")
    return target


def _read(path: Path, settings: dict) -> Measurement | None:
    """The cached result, or None when absent, unreadable or for other settings (never raises)."""
    try:
        result = Measurement.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    stored = result.to_dict()
    if any(stored[name] != (list(value) if isinstance(value, tuple) else value)
           for name, value in settings.items()):
        return None  # a hash-prefix collision or a hand-edited file
    return result


def _write(path: Path, result: Measurement) -> None:
    write_json(path, result.to_dict())
