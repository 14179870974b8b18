"""``measure``: the forward latency of a compiled layout on a kernel, against dense causal SDPA
timed in the same process, cached on disk.

The kernel and the baseline take turns, repeat by repeat, so a burst of load on a shared machine
slows both rather than one; the ratio is the median of the per-repeat ratios, which cancels slow
drifts that the two medians alone would not.

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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from patternc.errors import PatternMeaningError, brief
from patternc.limits import require
from patternc.machine import CACHE_ENV, cache_dir, cpu_model, write_json

if TYPE_CHECKING:
    from patternc.compiled import CompiledPattern

__all__ = ["CACHE_ENV", "KERNELS_REVISION", "PHASES", "Measurement", "cache_dir", "layout_hash", "measure",
           "resolve_device"]

# Raised whenever a change to patternc's kernels can change how fast a layout runs (2: a dense causal
# layer runs SDPA's causal kernel), so that results measured on the old kernels are not read back.
KERNELS_REVISION = 2
PHASES = ("prefill", "decode")  # measure(phase=...): the whole sequence, or one decode step


@dataclass(frozen=True, slots=True)
class Measurement:
    """Median forward seconds of ``backend`` and of dense causal SDPA, and the settings."""

    seconds: float  # median over repeats, after warm-up
    baseline_seconds: float  # dense causal SDPA, same shapes, same process, timed in turns
    ratio: float  # median of the repeats' seconds / baseline seconds: below 1 is faster
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

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "block": list(self.block)}

    @classmethod
    def from_dict(cls, data: dict) -> Measurement:
        return cls(**{**data, "block": tuple(data["block"])})


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


def _seconds(run, q, k, v) -> float:
    gpu = q.device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(q.device)
    start = time.perf_counter()
    run(q, k, v)
    if gpu:
        torch.cuda.synchronize(q.device)  # kernels run asynchronously: wait for them to finish
    return time.perf_counter() - start


def _timed_in_turns(run, baseline, q, k, v, repeats: int, warmup: int) -> tuple[float, float, float]:
    """Median seconds of ``run`` and ``baseline``, timed alternately (the order flips each repeat,
    so neither always runs on the other's warm cache), and the median of the per-repeat ratios."""
    with torch.inference_mode():
        for _ in range(warmup):
            run(q, k, v)
            baseline(q, k, v)
        ours, theirs = [], []
        for i in range(repeats):
            if i % 2:
                theirs.append(_seconds(baseline, q, k, v))
                ours.append(_seconds(run, q, k, v))
            else:
                ours.append(_seconds(run, q, k, v))
                theirs.append(_seconds(baseline, q, k, v))
    ratio = statistics.median(a / b for a, b in zip(ours, theirs, strict=True))
    return statistics.median(ours), statistics.median(theirs), ratio


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
    ``repeats`` 9: on a shared 2-core machine, repeated calls' ratios then
    agree within ~3% (5 repeats: ~6-12%; ``benchmarks/cost_repeat.py``).

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
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise PatternMeaningError(f"measure(): {name} must be an integer >= {low}, got {brief(value)}")
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
    seconds, baseline, ratio = _timed_in_turns(run, baseline, q, k, v, repeats, warmup)
    result = Measurement(seconds=seconds, baseline_seconds=baseline, ratio=ratio, **settings)
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
