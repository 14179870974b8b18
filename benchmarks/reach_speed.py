"""Reachability speed: block-level bounds at a million tokens, token-exact analysis at 16k.

    python benchmarks/reach_speed.py           # the issue's sizes
    python benchmarks/reach_speed.py --quick   # n / 16 (a smoke run)

Each figure is the wall time of ``patternc.reach`` on an already compiled stack (compiling is
measured by compile_speed.py), and its peak memory through tracemalloc (numpy's allocations).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import patternc
from patternc.reachability import reach


def strided(layers: int, heads: int, s: int) -> patternc.Stack:
    """Sparse Transformer, strided: half the heads a window of s, half a stride of s."""
    return patternc.Stack(default=f"causal & window({s})", layers=layers, heads=heads, causal=True,
                          overrides=(patternc.Override(f"causal & stride({s})", heads=(heads // 2, heads)),))


def measure(label: str, stack: patternc.Stack, n: int, **options) -> None:
    cp = patternc.compile(stack, n=n, block=128)
    start = time.perf_counter()
    report = reach(cp, **options)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    reach(cp, **options)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    low, high = report.covered_bounds
    depth = report.mixing_depth if report.mixing_depth is not None else (
        "never" if report.never else f"in {list(report.mixing_depth_bounds)}")
    mode = "exact" if report.exact else "bounds"
    print(f"{label:<52} {n:>9,} {stack.layers:>3}x{stack.heads:<3} {mode:>6} "
          f"{seconds:>7.2f} s {peak / 2**20:>7.0f} MiB   mixing {depth}, covered "
          f"{low:.3f}..{high:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    big, exact_n = (65536, 4096) if args.quick else (1048576, 16384)
    print(f"{'stack':<52} {'n':>9} {'LxH':>7} {'mode':>6} {'time':>9} {'peak':>11}")
    measure("strided, window/stride 1024 (block bounds)", strided(32, 8, 1024), big)
    window = patternc.Stack(default="causal & (window(4096) | sink(64))", layers=32, heads=8, causal=True)
    measure("window 4096 + 64 sinks (block bounds)", window, big)
    measure("strided, window/stride 128 (token-exact)", strided(12, 8, 128), exact_n,
            exact_limit=exact_n, max_depth=12)
    measure("window 256 (token-exact, does not mix in 12)",
            patternc.Stack(default="causal & window(256)", layers=12, heads=8, causal=True), exact_n,
            exact_limit=exact_n, max_depth=12)
    measure("Longformer conf (token-exact)", patternc.load_stack("conf/pattern/longformer.yaml"), exact_n,
            exact_limit=exact_n, max_depth=12)


if __name__ == "__main__":
    main()
