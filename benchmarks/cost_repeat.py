"""Repeatability of ``patternc.measure`` and the cost of a cache hit (issue 4, target 3: repeated
calls agree within 5%, a hit costs under 10 ms).

    python benchmarks/cost_repeat.py --threads 1                 # n = 8192, 5 uncached calls
    python benchmarks/cost_repeat.py --n 16384 --calls 3 --backend flex

Each uncached call times the kernel and dense causal SDPA afresh (in a throw-away cache directory,
so nothing is read from a real one). The spread is over the calls' medians: ``max |x - med| / med``
where ``med`` is the median of the calls, for the kernel's seconds, the baseline's and the ratio.
Then one call stores the result and the next ``--hits`` calls are timed: hits read the file only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import patternc
from patternc.machine import CACHE_ENV


def spread(values: list[float]) -> float:
    """Largest relative distance of a value from the median of all."""
    middle = statistics.median(values)
    return max(abs(x - middle) for x in values) / middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="causal & (window(512) | sink(64))")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--backend", default="kernel", choices=("kernel", "flex", "sdpa"))
    parser.add_argument("--calls", type=int, default=5, help="uncached measure calls")
    parser.add_argument("--hits", type=int, default=20, help="cache hits timed")
    parser.add_argument("--repeats", type=int, help="timed repeats per call (default: measure's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    cp = patternc.compile(args.spec, args.n)
    print(f"{args.spec!r}, n = {args.n}, {args.heads} heads, d = {args.head_dim}, {args.dtype}, "
          f"{args.backend}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    repeats = {"repeats": args.repeats} if args.repeats else {}

    def measure(cache: bool) -> patternc.Measurement:
        return patternc.measure(cp, heads=args.heads, head_dim=args.head_dim, backend=args.backend,
                                dtype=dtype, cache=cache, **repeats)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ[CACHE_ENV] = tmp
        runs = []
        for i in range(args.calls):
            m = measure(cache=False)
            runs.append(m)
            print(f"call {i}: {1e3 * m.seconds:9.2f} ms   baseline {1e3 * m.baseline_seconds:9.2f} ms   "
                  f"ratio {m.ratio:.4f}", flush=True)
        for name in ("seconds", "baseline_seconds", "ratio"):
            values = [getattr(m, name) for m in runs]
            width = (max(values) - min(values)) / statistics.median(values)
            print(f"spread of {name:<16} {100 * spread(values):5.1f}% from the median "
                  f"({100 * width:.1f}% max - min)")
        measure(cache=True)  # stores the result
        hits = []
        for _ in range(args.hits):
            start = time.perf_counter()
            measure(cache=True)
            hits.append(time.perf_counter() - start)
        print(f"cache hit: median {1e3 * statistics.median(hits):.2f} ms, max {1e3 * max(hits):.2f} ms "
              f"over {args.hits} hits")


if __name__ == "__main__":
    main()
