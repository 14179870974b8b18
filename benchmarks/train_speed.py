"""Training speed: forward + backward of our block-sparse kernel against dense causal SDPA forward +
backward, as a fraction of the ideal speedup; and the forward's effective rate over stored blocks
against this machine's peak matmul rate and dense float32 SDPA's rate.

    python benchmarks/train_speed.py                # n = 8k, 16k, 32k; float32 and bf16 (minutes)
    python benchmarks/train_speed.py --quick        # n = 1k, 2k, 2 heads: a smoke run (seconds)
    python benchmarks/train_speed.py --n 16384 --dtype bf16 --threads 1 --path bf16

Patterns: ``causal & (window(W) | sink(64))`` with W a fraction of n, and Sparse Transformer's
fixed pattern with strided summaries, ``causal & fixed(C, 64)`` with C near sqrt(128 n) (its
lowest density). Their block densities span about 2-20% at block 128.

Ideal speedup = dense causal's stored blocks / the pattern's stored blocks (the work skipped, if
every stored block cost what a dense block costs). Every figure of a row, the dense baseline
included, is timed in one process, the kernels taking turns repeat by repeat, so machine noise
hits all alike; times are medians after an untimed warm-up. ``path`` is our kernel's compute
path (``auto``: measured once per machine, see ``patternc.kernels.paths``).

The rate table: effective rate = 4 * stored pairs * d / forward seconds (stored pairs = stored
blocks * bq * bk, summed over heads; the same formula for dense causal over its own stored
blocks), beside the measured peak of a 2048^3 matmul in that dtype (the physical limit) and dense
float32 SDPA's rate on the same machine. On a shared machine quote ``uptime``'s load with the
figures, and prefer ``--threads 1`` when other jobs run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import patternc
from patternc.compiled import clear_cache
from patternc.kernels import block_sparse_attention, measure_paths

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SINKS = 64  # attention sinks, as StreamingLLM keeps


def patterns(n: int, fractions: list[float], block: int) -> list[str]:
    windows = sorted({max(block, round(f * n / block) * block) for f in fractions})
    chunk = max(2 * block, 2 ** round(math.log2(math.sqrt(block * n))))  # fixed's densest-saving chunk
    return [f"causal & (window({w}) | sink({SINKS}))" for w in windows] + [f"causal & fixed({chunk}, 64)"]


def stored_pairs(cp, heads: int) -> int:
    """Token pairs of every stored block of layer 0 over ``heads`` heads (a one-head pattern's
    layout serves every head)."""
    bq, bk = cp.block
    return sum(cp.layout(0, h if cp.heads > 1 else 0).nnz for h in range(heads)) * bq * bk


def block_density(cp) -> float:
    """Stored blocks / all blocks, averaged over the pattern's heads."""
    grid = cp.grid
    return stored_pairs(cp, cp.heads) / (cp.heads * grid.nbq * grid.nbk * grid.bq * grid.bk)


def in_turns(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function's phases, one repeat of each function in turn (the order
    reversed every other round, so none always runs on another's warm cache), after one untimed
    warm-up each. A function returns its phases' seconds (``{"_fwd": s, "_bwd": s}``), or anything
    else and is then timed whole."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {}
    for i in range(repeats):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            phases = fns[name]()
            if not isinstance(phases, dict):
                phases = {"": time.perf_counter() - start}
            for phase, seconds in phases.items():
                times.setdefault(f"{name}{phase}", []).append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def train_step(attention, q, k, v, grad):
    """One forward + backward of ``attention`` on fresh leaves (so no gradient accumulates),
    timed phase by phase."""
    def step() -> dict[str, float]:
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        start = time.perf_counter()
        out = attention(*leaves)
        middle = time.perf_counter()
        out.backward(grad)
        return {"_fwd": middle - start, "_bwd": time.perf_counter() - middle}
    return step


def forward_only(attention, q, k, v):
    def step() -> None:
        with torch.no_grad():
            attention(q, k, v)
    return step


def dense(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def peak_matmul(dtype: torch.dtype, size: int = 2048) -> float:
    """GFLOP/s of a size^3 matmul in ``dtype``: the machine's own physical limit."""
    a = torch.randn(size, size).to(dtype)
    seconds = in_turns({"mm": lambda: a @ a}, 3)["mm"]
    return 2 * size ** 3 / seconds / 1e9


def qkv(heads: int, n: int, d: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, heads, n, d, generator=gen).to(dtype) for _ in range(4)]  # q, k, v, grad


def train_table(ns, fractions, heads, d, block, dtypes, repeats, path) -> None:
    print("forward + backward, speedup over dense causal SDPA forward + backward (fraction of ideal)")
    print(f"{'dtype':>5} {'n':>6} {'pattern':<36} {'density':>7} {'ideal':>6}  {'fwd+bwd':>14}  "
          f"{'fwd':>14}  {'bwd':>14}  {'ours ms':>8} {'dense ms':>8}")
    for name in dtypes:
        for n in ns:
            q, k, v, grad = qkv(heads, n, d, DTYPES[name])
            causal_pairs = stored_pairs(patternc.compile("causal", n, block=block), heads)
            compiled = {spec: patternc.compile(spec, n, block=block)
                        for spec in patterns(n, fractions, block)}
            # the dense baseline and every pattern of this n take turns, round by round
            steps = {"dense": train_step(dense, q, k, v, grad)}
            for spec, cp in compiled.items():
                steps[spec] = train_step(
                    lambda q, k, v, cp=cp: block_sparse_attention(q, k, v, cp, path=path), q, k, v, grad)
            t = in_turns(steps, repeats)
            for spec, cp in compiled.items():
                ideal = causal_pairs / stored_pairs(cp, heads)

                def cell(phases, t=t, spec=spec, ideal=ideal):
                    speedup = sum(t[f"dense_{p}"] for p in phases) / sum(t[f"{spec}_{p}"] for p in phases)
                    return f"{speedup:6.2f}x ({speedup / ideal:.2f})"

                print(f"{name:>5} {n:>6} {spec:<36} {block_density(cp):7.3f} {ideal:6.2f}  "
                      f"{cell(('fwd', 'bwd'))}  {cell(('fwd',))}  {cell(('bwd',))}  "
                      f"{1e3 * (t[f'{spec}_fwd'] + t[f'{spec}_bwd']):8.0f} "
                      f"{1e3 * (t['dense_fwd'] + t['dense_bwd']):8.0f}", flush=True)


def rate_table(n, fractions, heads, d, block, dtypes, repeats, path) -> None:
    print(f"\nforward rate over stored blocks, GFLOP/s (4 * stored pairs * d / s), n = {n}")
    q32, k32, v32, _ = qkv(heads, n, d, torch.float32)
    causal = patternc.compile("causal", n, block=block)
    compiled = {spec: patternc.compile(spec, n, block=block) for spec in patterns(n, fractions, block)}
    peaks = {name: peak_matmul(DTYPES[name]) for name in dtypes}
    print("peak matmul (2048^3): " + ", ".join(f"{name} {peaks[name]:.0f}" for name in dtypes))
    print(f"{'dtype':>5} {'pattern':<36} {'ours':>7} {'dense fp32':>10} {'ours/dense fp32':>15} "
          f"{'ours/peak':>9}")
    for name in dtypes:
        q, k, v = (x.to(DTYPES[name]) for x in (q32, k32, v32))
        steps = {"dense_fp32": forward_only(dense, q32, k32, v32)}
        for spec, cp in compiled.items():
            steps[spec] = forward_only(
                lambda q, k, v, cp=cp: block_sparse_attention(q, k, v, cp, path=path), q, k, v)
        t = in_turns(steps, repeats)
        theirs = 4 * stored_pairs(causal, heads) * d / t["dense_fp32"] / 1e9
        for spec, cp in compiled.items():
            ours = 4 * stored_pairs(cp, heads) * d / t[spec] / 1e9
            print(f"{name:>5} {spec:<36} {ours:7.0f} {theirs:10.0f} {ours / theirs:15.2f} "
                  f"{ours / peaks[name]:9.2f}", flush=True)


# ---- per-batch rebuild of a document mask -----------------------------------------------------------

PACKED = "causal & window(512) & documents($starts)"


def document_table(ns: list[int], repeats: int) -> None:
    """A packed batch changes its document starts every step: the mask is rebuilt each time. Ours
    (a cold compile with new starts) against create_block_mask(_compile=True) evaluating the same
    predicate on every pair, in turns; then ours against one training step of our kernel."""
    import warnings

    from torch.nn.attention.flex_attention import create_block_mask

    warnings.filterwarnings("ignore", message="_compile flag", category=DeprecationWarning)
    rng = np.random.default_rng(0)
    print(f"\n{'n':>7} {'patternc compile':>17} {'create_block_mask':>18} {'speedup':>8}  (per batch: "
          f"{PACKED}, 8 documents)")
    for n in ns:
        batches = [sorted(rng.choice(np.arange(1, n), 7, replace=False).tolist()) for _ in range(repeats + 1)]

        def theirs(starts=batches[0], n=n):
            doc = torch.zeros(n, dtype=torch.int32)
            doc[torch.tensor(starts)] = 1
            doc = doc.cumsum(0)

            def mask_mod(b, h, q, k):
                return (k <= q) & (q - k < 512) & (doc[q] == doc[k])

            return create_block_mask(mask_mod, None, None, n, n, device="cpu", _compile=True)

        theirs()  # torch.compile of the mask_mod, untimed
        ours_s, theirs_s = [], []
        for starts in batches[1:]:
            clear_cache()
            start = time.perf_counter()
            patternc.compile(PACKED, n=n, params={"starts": starts})
            ours_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            theirs(starts)
            theirs_s.append(time.perf_counter() - start)
        ours, base = statistics.median(ours_s), statistics.median(theirs_s)
        print(f"{n:>7} {1e3 * ours:14.1f} ms {1e3 * base:15.1f} ms {base / ours:7.0f}x", flush=True)


def _ms(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {1e3 * s:.1f}" for name, s in seconds.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--n", type=int, nargs="*", help="sequence lengths (default 8k 16k 32k)")
    parser.add_argument("--heads", type=int, help="default 4 (2 with --quick)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block", type=int, default=128)  # FlexAttention's default tile
    parser.add_argument("--dtype", choices=(*DTYPES, "both"), default="both")
    parser.add_argument("--fractions", type=float, nargs="*", help="window / n (default 1/64 1/32 1/8)")
    parser.add_argument("--repeats", type=int, help="default 3 (1 with --quick)")
    parser.add_argument("--path", choices=("auto", "fused", "fused_fp32", "bf16", "math"), default=None,
                        help="our kernel's compute path (default: $PATTERNC_KERNEL_PATH, else auto)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 on a busy machine")
    parser.add_argument("--no-rates", action="store_true", help="skip the forward rate table")
    parser.add_argument("--documents", type=int, nargs="*", help="lengths of the document-mask table "
                        "(default 32k 128k; 4k with --quick); --documents alone skips it")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ns = args.n or ([1024, 2048] if args.quick else [8192, 16384, 32768])
    fractions = args.fractions or [1 / 64, 1 / 32, 1 / 8]
    heads = args.heads or (2 if args.quick else 4)
    repeats = args.repeats or (1 if args.quick else 3)
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    choice = measure_paths(args.head_dim)
    print(f"{heads} heads, d = {args.head_dim}, block {args.block}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}")
    chosen = args.path or os.environ.get("PATTERNC_KERNEL_PATH") or "auto"
    print(f"path {chosen}; measured for bf16 on this CPU (ms): forward {choice.forward} "
          f"({_ms(choice.forward_seconds)}), backward {choice.backward} ({_ms(choice.backward_seconds)})\n")
    train_table(ns, fractions, heads, args.head_dim, args.block, dtypes, repeats, args.path)
    if not args.no_rates:
        rate_table(ns[len(ns) // 2], fractions, heads, args.head_dim, args.block, dtypes, repeats, args.path)
    documents = args.documents if args.documents is not None else ([4096] if args.quick else [32768, 131072])
    if documents:
        document_table(documents, repeats)


if __name__ == "__main__":
    main()
