"""Kernel speed: speedup over dense causal SDPA of our reference kernel, of compiled FlexAttention with
our BlockMask and with ``create_block_mask``'s, each as a fraction of the ideal speedup.

    python benchmarks/kernel_speed.py            # n = 8k .. 64k, block densities ~1% .. 50%
    python benchmarks/kernel_speed.py --quick    # n = 4k, 8k, three densities, two heads (a smoke run)
    python benchmarks/kernel_speed.py --threads 1 --n 16384 32768 --fractions 0.01 0.02 0.05 0.1
    python benchmarks/kernel_speed.py --no-flex --path bf16   # our kernel's bf16 matmul path

Patterns are ``causal & (window(W) | sink(64))`` with W a fraction of n. The ideal speedup is the
dense causal block density over the pattern's block density (the work skipped, if every stored
block cost what a dense block costs). Every figure of a row, the dense baseline included, is timed
in one process, the kernels taking turns repeat by repeat, so machine noise affects all alike;
times are medians after an untimed warm-up, which also holds FlexAttention's compile. The last
table is the fastest block size per pattern for our kernel. On a busy machine use ``--threads 1``.
``--path`` picks our kernel's compute path (default ``$PATTERNC_KERNEL_PATH``, else ``auto``; see
``patternc.kernels.paths``). Forward + backward: ``benchmarks/train_speed.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.nn.attention.flex_attention import create_block_mask

import patternc
from patternc.kernels import block_sparse_attention, causal_sdpa, compiled_flex

SINKS = 64  # attention sinks, as StreamingLLM keeps


def median_seconds(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turns (one repeat of each, then the next), so a
    burst of load on a shared machine hits all of them rather than one."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn()  # warm-up: compiles flex, faults in memory
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def their_block_mask(window: int, n: int, block: int):
    """``create_block_mask`` for the same pattern, with the mask_mod written by hand."""
    def mod(b, h, q, k):
        return (k <= q) & (((q - k) < window) | (k < SINKS))

    return create_block_mask(mod, None, None, n, n, device="cpu", BLOCK_SIZE=block)


def block_density(cp) -> float:
    return cp.stats().per_head[0].block_density


def row(n: int, window: int, block: int, repeats: int, flex: bool, qkv, path: str | None) -> dict:
    """Speedups over dense causal SDPA of one pattern, with the baseline timed alongside."""
    q, k, v = qkv  # (1, H, n, d) each
    cp = patternc.compile(f"causal & (window({window}) | sink({SINKS}))", n, block=block)
    ideal = block_density(patternc.compile("causal", n, block=block)) / block_density(cp)
    fns = {"dense": lambda: causal_sdpa(q, k, v),
           "ours": lambda: block_sparse_attention(q, k, v, cp, path=path)}
    if flex:
        fx = compiled_flex()
        ours_bm, theirs_bm = cp.to_block_mask(0), their_block_mask(window, n, block)
        fns["flex_ours"] = lambda: fx(q, k, v, block_mask=ours_bm)
        fns["flex_cbm"] = lambda: fx(q, k, v, block_mask=theirs_bm)
    seconds = median_seconds(fns, repeats)
    out = {"n": n, "window": window, "density": block_density(cp), "ideal": ideal}
    return out | {name: seconds["dense"] / t for name, t in seconds.items() if name != "dense"}


def best_block(n: int, window: int, qkv, repeats: int, path: str | None) -> tuple[int, dict[int, float]]:
    q, k, v = qkv
    times = {}
    for block in (64, 128, 256):
        cp = patternc.compile(f"causal & (window({window}) | sink({SINKS}))", n, block=block)
        times[block] = median_seconds(
            {"ours": lambda cp=cp: block_sparse_attention(q, k, v, cp, path=path)}, repeats)["ours"]
    return min(times, key=times.get), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--n", type=int, nargs="*", help="sequence lengths (default 8k..64k)")
    parser.add_argument("--heads", type=int, default=None, help="default 8 (2 with --quick)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--block", type=int, default=128)  # FlexAttention's default tile
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compile is slow)")
    parser.add_argument("--fractions", type=float, nargs="*", help="window / n (default 0.01 .. 0.5)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 on a busy machine")
    parser.add_argument("--no-best-block", action="store_true", help="skip the block size table")
    parser.add_argument("--path", choices=("auto", "fused", "fused_fp32", "bf16", "math"), default=None,
                        help="our kernel's compute path (default: $PATTERNC_KERNEL_PATH, else auto)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ns = args.n or ([4096, 8192] if args.quick else [8192, 16384, 32768, 65536])
    fractions = args.fractions or ([0.02, 0.1, 0.5] if args.quick else [0.01, 0.02, 0.05, 0.1, 0.25, 0.5])
    heads = args.heads or (2 if args.quick else 8)
    repeats = args.repeats or (2 if args.quick else 3)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    warnings.filterwarnings("ignore")  # torch.compile's chatter
    print(f"{heads} heads, d = {args.head_dim}, {args.dtype}, block {args.block}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("speedup over dense causal SDPA (fraction of ideal)")
    print(f"{'n':>6} {'window':>6} {'density':>7} {'ideal':>6}  {'ours':>14}  {'flex+ours':>14}  "
          f"{'flex+cbm':>14}  {'ours/cbm':>8}")
    best = []
    for n in ns:
        gen = torch.Generator().manual_seed(0)
        qkv = [torch.randn(1, heads, n, args.head_dim, generator=gen).to(dtype) for _ in range(3)]
        for fraction in fractions:
            window = max(64, round(fraction * n / 64) * 64)
            r = row(n, window, args.block, repeats, not args.no_flex, qkv, args.path)

            def cell(name, r=r):
                return f"{r[name]:6.2f}x ({r[name] / r['ideal']:.2f})" if name in r else f"{'-':>14}"

            ratio = f"{r['flex_ours'] / r['flex_cbm']:8.2f}" if "flex_ours" in r else f"{'-':>8}"
            print(f"{n:>6} {window:>6} {r['density']:7.3f} {r['ideal']:6.2f}  {cell('ours')}  "
                  f"{cell('flex_ours')}  {cell('flex_cbm')}  {ratio}", flush=True)
            if n == ns[0] and not args.no_best_block:
                best.append((n, window, *best_block(n, window, qkv, repeats, args.path)))
    if not best:
        return
    print("\nbest block size for our kernel (median ms at 64 / 128 / 256)")
    for n, window, block, times in best:
        print(f"n {n:>6} window {window:>6}: {block:>4}   "
              + " / ".join(f"{1e3 * times[b]:.1f}" for b in (64, 128, 256)))


if __name__ == "__main__":
    main()
