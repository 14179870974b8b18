"""Kernel speed: speedup over dense causal SDPA of our reference kernel, of compiled FlexAttention with
our BlockMask and with ``create_block_mask``'s, each as a fraction of the ideal speedup.

    python benchmarks/kernel_speed.py            # n = 8k .. 64k, block densities ~1% .. 50%
    python benchmarks/kernel_speed.py --quick    # n = 4k, 8k, three densities, two heads (a smoke run)
    python benchmarks/kernel_speed.py --threads 1 --n 16384 32768 --fractions 0.01 0.02 0.05 0.1
    python benchmarks/kernel_speed.py --no-flex --path bf16   # our kernel's bf16 matmul path
    python benchmarks/kernel_speed.py --breakdown --dtype fp32 --n 2048 4096 8192 16384  # issue 26

``--breakdown``: where one forward's time goes, for issue 26's three layouts (a window of n/8, a
sink and a window of 512, Sparse Transformer fixed): its calls (of which gathered), milliseconds in
SDPA's kernel, in log-sum-exp stores and merges, in gathering keys, and the rest (Python, plans,
masks), against dense causal SDPA, and the ratio and fraction of the ideal speedup of ``attend``
(the kernel, or masked SDPA where the machine's cost model prefers it), timed in turns with dense.

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
import collections
import contextlib
import dataclasses
import os
import statistics
import time
import warnings

import torch
from torch.nn.attention.flex_attention import create_block_mask

import patternc
from patternc.kernels import attend, block_sparse_attention, causal_sdpa, compiled_flex, reference
from patternc.machine import cpu_model

SINKS = 64  # attention sinks, as StreamingLLM keeps
ISSUE_26 = {"window(n/8)": "causal & window({n} // 8)",
            "sink64+window512": "causal & (window(512) | sink(64))",
            "fixed": "causal & fixed({n} // 16, max(1, {n} // 1024))"}


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


@contextlib.contextmanager
def timers():
    """Seconds and counts of the walk's parts while the block runs: the calls' compute (every path),
    stores and merges, key gathers."""
    seconds: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()

    def timed(name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds[name] += time.perf_counter() - start
            counts[name] += 1
            return out
        return run

    saved = dict(reference.PATHS), reference._store_or_merge, reference._Call.read
    reference.PATHS.update({name: dataclasses.replace(path, forward=timed("sdpa", path.forward))
                            for name, path in saved[0].items()})
    reference._store_or_merge = timed("merge", saved[1])
    reference._Call.read = lambda call, x: timed("gather", saved[2])(call, x) if call.index is not None else x
    try:
        yield seconds, counts
    finally:
        reference.PATHS.update(saved[0])
        reference._store_or_merge, reference._Call.read = saved[1], saved[2]


def breakdown(ns: list[int], heads: int, head_dim: int, dtype: torch.dtype, repeats: int) -> None:
    """Issue 26's layouts: where a forward's time goes, and attend's speed against dense causal."""
    print(f"\nbreakdown of one forward (median of {repeats}; ms), and attend against dense causal SDPA")
    print(f"{'n':>6} {'layout':<17} {'calls':>9} {'walk':>8} {'sdpa':>8} {'merge':>7} {'gather':>7} "
          f"{'rest':>7} {'dense':>8} {'ideal':>6} {'ratio':>6} {'of ideal':>8}")
    for n in ns:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, heads, n, head_dim, generator=gen).to(dtype) for _ in range(3))
        causal = block_density(patternc.compile("causal", n))
        for name, spec in ISSUE_26.items():
            cp = patternc.compile(spec.format(n=n), n)
            ideal = causal / block_density(cp)
            parts = []
            with torch.inference_mode():
                block_sparse_attention(q, k, v, cp)  # plans and masks built outside the timing
                for _ in range(repeats):
                    with timers() as (seconds, counts):
                        start = time.perf_counter()
                        block_sparse_attention(q, k, v, cp)
                        seconds["walk"] = time.perf_counter() - start
                    parts.append((dict(seconds), counts["sdpa"], counts["gather"]))
            ms = {key: 1e3 * statistics.median(p[0].get(key, 0.0) for p in parts)
                  for key in ("walk", "sdpa", "merge", "gather")}
            rest = ms["walk"] - ms["sdpa"] - ms["merge"] - ms["gather"]
            qkv = (q, k, v)
            times = median_seconds({"dense": lambda qkv=qkv: causal_sdpa(*qkv),
                                    "attend": lambda cp=cp, qkv=qkv: attend(*qkv, cp, backend="kernel")},
                                   repeats)
            ratio = times["attend"] / times["dense"]
            calls = f"{parts[0][1]} ({parts[0][2] // 2})"  # a gathered call reads k and v
            print(f"{n:>6} {name:<17} {calls:>9} {ms['walk']:8.1f} {ms['sdpa']:8.1f} {ms['merge']:7.1f} "
                  f"{ms['gather']:7.1f} {rest:7.1f} {1e3 * times['dense']:8.1f} {ideal:6.2f} {ratio:6.3f} "
                  f"{1 / (ratio * ideal):8.2f}", flush=True)


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
    parser.add_argument("--breakdown", action="store_true",
                        help="only where one forward's time goes, for issue 26's three layouts")
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
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {cpu_model()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.breakdown:
        ns = args.n or [2048, 4096, 8192, 16384]
        breakdown(ns, args.heads or 8, args.head_dim, dtype, args.repeats or 5)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return
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
