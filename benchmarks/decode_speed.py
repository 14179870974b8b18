"""Decode steps under a pattern against dense decode, beside the ideal speedup.

One decode step at position ``context`` (the pattern compiled at ``n = context + 1``): our decode
kernel (``patternc.kernels.decode.DecodeCache``, a paged cache holding what the pattern still
reads) against dense SDPA over all ``context + 1`` cached keys, timed in turns
(``patternc.measure(phase="decode")``). The ideal speedup is the dense cache's keys over the keys
the cache holds (``held``): a decode step reads its cache once, so its time follows those bytes.

    python benchmarks/decode_speed.py                     # 16k-256k, 8 heads x 64, float32 and bfloat16
    python benchmarks/decode_speed.py --quick             # 16k and 128k, float32
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

import patternc
from patternc.kernels.decode import DecodeCache
from patternc.machine import cpu_model

PATTERNS = {
    "window 4096 + 64 sinks": "causal & (window(4096) | sink(64))",
    "window 1024 + 64 sinks": "causal & (window(1024) | sink(64))",
    "window 256 + stride 128 (keeps every 128th key)": "causal & (window(256) | stride(128))",
}


def held_keys(cp: patternc.CompiledPattern) -> int:
    """Keys the decode cache holds at the last step (whole blocks)."""
    cache = DecodeCache(cp, head_dim=1)
    prompt, step = (torch.zeros(1, cp.stack.kv_heads, s, 1) for s in (cp.n - 1, 1))
    cache.prefill(prompt, prompt)
    cache.append(step, step)
    return cache.held_keys()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 on a machine other jobs share: a descheduled thread "
                             "stalls a 2-thread step by a whole time slice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    contexts = [16384, 131072] if args.quick else [16384, 65536, 131072, 262144]
    dtypes = [torch.float32] if args.quick else [torch.float32, torch.bfloat16]
    print(f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}; {args.heads} heads x "
          f"d {args.head_dim}, batch 1")
    print(f"{'pattern':<50} {'context':>9} {'dtype':>9} {'held':>8} {'ours ms':>9} {'dense ms':>9} "
          f"{'speedup':>8} {'ideal':>7} {'of ideal':>9}")
    for name, expr in PATTERNS.items():
        for context in contexts:
            cp = patternc.compile(patternc.Stack(expr, heads=args.heads), n=context + 1)
            held = held_keys(cp)
            ideal = (context + 1) / held
            for dtype in dtypes:
                m = patternc.measure(cp, head_dim=args.head_dim, dtype=dtype, phase="decode",
                                     repeats=args.repeats, warmup=2, cache=False)
                speedup = 1 / m.ratio
                print(f"{name:<50} {context:>9,} {m.dtype:>9} {held:>8,} {1e3 * m.seconds:>9.3f} "
                      f"{1e3 * m.baseline_seconds:>9.3f} {speedup:>7.1f}x {ideal:>6.1f}x "
                      f"{speedup / ideal:>9.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
