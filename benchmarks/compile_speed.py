"""Compile speed: patternc against FlexAttention's create_block_mask, measured side by side.

    python benchmarks/compile_speed.py            # n = 16k .. 128k, then 1M x 32 heads
    python benchmarks/compile_speed.py --quick    # n = 16k, 32k and 256k x 32 heads (a smoke run)

``create_block_mask(_compile=True)`` evaluates the mask_mod on every token pair; patternc
enumerates blocks analytically. Each ratio is measured in one process, one after the other, on the
same pattern, so machine noise affects both sides alike. The baseline's mask_mods are written by
hand in torch, as attention-gym users write them today. Times are medians of warm runs (the
baseline's torch.compile happens in an untimed warm-up at each n).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
import warnings

import torch
from torch.nn.attention.flex_attention import create_block_mask

import patternc
from patternc.compiled import clear_cache

WINDOW_GLOBAL = "causal & (window(4096) | global(64))"
PER_HEAD = "causal & (window(512 * 2**(h % 4)) | sink(64))"  # 8 heads: windows 512 .. 4096


def window_global_mod(b, h, q, k):
    return (k <= q) & (((q - k).abs() < 4096) | (q < 64) | (k < 64))


def per_head_mod(b, h, q, k):
    return (k <= q) & (((q - k) < (512 << (h % 4))) | (k < 64))


def ours(spec, n: int, repeats: int) -> float:
    """Median seconds of a cold patternc compile (the compile cache is cleared each time)."""
    times = []
    for _ in range(repeats):
        clear_cache()
        gc.collect()
        start = time.perf_counter()
        patternc.compile(spec, n=n, block=128)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def baseline(mask_mod, heads: int | None, n: int, repeats: int) -> float:
    """Median seconds of a warm create_block_mask(_compile=True) call."""
    warnings.filterwarnings("ignore", message="_compile flag", category=DeprecationWarning)
    create_block_mask(mask_mod, None, heads, n, n, device="cpu", _compile=True)  # compile, untimed
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        create_block_mask(mask_mod, None, heads, n, n, device="cpu", _compile=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(spec, n: int) -> int:
    """Peak bytes allocated (numpy and Python, via tracemalloc) during one cold compile."""
    clear_cache()
    gc.collect()
    tracemalloc.start()
    patternc.compile(spec, n=n, block=128)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (CI smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    lengths = [16384, 32768] if args.quick else [16384, 32768, 65536, 131072]
    # The baseline's time grows with n^2 x heads (about a minute per call at 128k for one head
    # here), so the 8-head stack is compared at the shorter lengths only.
    per_head_lengths = [16384] if args.quick else [16384, 32768]
    big_n = 262144 if args.quick else 1048576
    per_head_stack = patternc.Stack(default=PER_HEAD, layers=1, heads=8, causal=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; block 128; times in seconds")
    print(f"{'pattern':<40} {'n':>8} {'patternc':>10} {'create_block_mask':>18} {'ratio':>8}")
    for label, spec, mod, heads, ns in (
        (WINDOW_GLOBAL, WINDOW_GLOBAL, window_global_mod, None, lengths),
        ("8-head stack: window(512 * 2**(h % 4))", per_head_stack, per_head_mod, 8, per_head_lengths),
    ):
        for n in ns:
            repeats = 1 if n >= 65536 or heads else 3  # a call of many seconds is its own average
            t_ours = ours(spec, n, repeats=5)
            t_base = baseline(mod, heads, n, repeats)
            print(f"{label:<40} {n:>8} {t_ours:>10.4f} {t_base:>18.3f} {t_base / t_ours:>7.0f}x",
                  flush=True)

    stack_32 = patternc.Stack(
        default="causal & (window(512 * 2**(h % 4) + 128 * (h // 4)) | global(64))",
        layers=1, heads=32, causal=True,
    )
    t = ours(stack_32, big_n, repeats=3)
    peak = peak_bytes(stack_32, big_n)
    cp = patternc.compile(stack_32, n=big_n, block=128)
    blocks = sum(cp.layout(0, h).nnz for h in range(32))
    print(f"\npatternc alone, n = {big_n:,}, 32 distinct heads "
          f"({stack_32.default}), block 128:")
    print(f"  compile {t:.3f} s, peak memory {peak / 2**20:.0f} MiB, {blocks:,} blocks stored "
          f"({blocks / t / 1e6:.1f} M blocks/s)")


if __name__ == "__main__":
    main()
