"""Repeatability of ``patternc.measure`` on a shared machine, and the cost of a cache hit (issue 26,
target: ten measurements of one layout under a one-core competing load within 10% of their median).

    python benchmarks/cost_repeat.py                      # the three layouts of issue 26 at 8k, 10 calls each
    python benchmarks/cost_repeat.py --load 0 --calls 5   # no competing load
    python benchmarks/cost_repeat.py --spec "causal & window(1024)" --n 16384 --backend flex

``--load 1`` (the default) starts a second process that keeps one core busy (a Python busy loop)
for the whole run, as another job on the machine would. Each uncached call times the kernel and
dense causal SDPA afresh (in a throw-away cache directory, so nothing is read from a real one).
Per layout it prints every call's ratio with its own spread (the middle half of its repeats'
ratios) and rounds of repeats, then the spread over the calls: ``max |x - med| / med`` where
``med`` is the median of the calls, for the kernel's seconds, the baseline's and the ratio. Then
one call stores the result and the next ``--hits`` calls are timed: hits read the file only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import patternc
from patternc.machine import CACHE_ENV, cpu_model

# issue 26's three layouts ({n} is the sequence length)
SPECS = ("causal & window({n} // 8)", "causal & (window(512) | sink(64))",
         "causal & fixed({n} // 16, max(1, {n} // 1024))")


def spread(values: list[float]) -> float:
    """Largest relative distance of a value from the median of all."""
    middle = statistics.median(values)
    return max(abs(x - middle) for x in values) / middle


@contextlib.contextmanager
def busy_cores(count: int):
    """``count`` processes that each keep one core busy until the block ends."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", nargs="*", help="layouts (default: issue 26's three; {n} is n)")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--backend", default="kernel", choices=("kernel", "flex", "sdpa"))
    parser.add_argument("--calls", type=int, default=10, help="uncached measure calls per layout")
    parser.add_argument("--hits", type=int, default=20, help="cache hits timed")
    parser.add_argument("--repeats", type=int, help="timed repeats per call (default: measure's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--load", type=int, default=1, help="competing processes, one core busy each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    repeats = {"repeats": args.repeats} if args.repeats else {}
    print(f"n = {args.n}, {args.heads} heads, d = {args.head_dim}, {args.dtype}, {args.backend}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {cpu_model()}, "
          f"{args.load} busy core(s) of competing load; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp, busy_cores(args.load):
        os.environ[CACHE_ENV] = tmp
        for spec in [s.format(n=args.n) for s in (args.spec or SPECS)]:
            cp = patternc.compile(spec, args.n)

            def measure(cache: bool, cp=cp) -> patternc.Measurement:
                return patternc.measure(cp, heads=args.heads, head_dim=args.head_dim, backend=args.backend,
                                        dtype=dtype, cache=cache, **repeats)

            print(f"\n{spec!r}")
            runs = []
            for i in range(args.calls):
                m = measure(cache=False)
                runs.append(m)
                print(f"call {i}: {1e3 * m.seconds:9.2f} ms   baseline {1e3 * m.baseline_seconds:9.2f} ms   "
                      f"ratio {m.ratio:.4f} [{m.ratio_low:.4f}, {m.ratio_high:.4f}] "
                      f"spread {100 * m.spread:4.1f}%  rounds {m.rounds}  runs/repeat {m.calls_per_repeat}",
                      flush=True)
            for name in ("seconds", "baseline_seconds", "ratio"):
                values = [getattr(m, name) for m in runs]
                width = (max(values) - min(values)) / statistics.median(values)
                print(f"spread of {name:<16} {100 * spread(values):5.1f}% from the median "
                      f"({100 * width:.1f}% max - min)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        measure(cache=True)  # stores the last layout's result
        hits = []
        for _ in range(args.hits):
            start = time.perf_counter()
            measure(cache=True)
            hits.append(time.perf_counter() - start)
        print(f"cache hit: median {1e3 * statistics.median(hits):.2f} ms, max {1e3 * max(hits):.2f} ms "
              f"over {args.hits} hits")


if __name__ == "__main__":
    main()
