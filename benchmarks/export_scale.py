"""Exports at full scale: time and peak memory of each export at n = 1,048,576 with 32 heads, each
measured in its own process (peak RSS is the process's, torch and the compile included).

Targets (issue 14): ``to_block_mask`` of ``causal & (window(4096) | sink(64))`` at 1M x 32 heads
under 2 GiB peak and under 3 s. Side by side in the same run: the full-width tables
``create_block_mask`` would make, at 1M (refused by the size limit: their bytes are printed) and at
128k (built, to time and weigh against compact ones).

    python benchmarks/export_scale.py            # about a minute on 2 cores
    python benchmarks/export_scale.py --quick    # 128k only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

PATTERN = "causal & (window(4096) | sink(64))"
CHUNKS = "causal & (chunk(4096) | sink(64))"  # whole cells: FlashInfer's variable wrapper takes it
HEADS = 32
N = 2**20

# name -> (pattern, kv_heads, call); the call is evaluated with `cp` bound
CASES = {
    "to_block_mask(width='compact')": (PATTERN, HEADS, "cp.to_block_mask(0, width='compact')"),
    "to_block_mask() on cpu (padded)": (PATTERN, HEADS, "cp.to_block_mask(0)"),
    "to_block_mask(backward=False)": (PATTERN, HEADS, "cp.to_block_mask(0, width='compact', backward=False)"),
    "to_block_mask(width='full')": (PATTERN, HEADS, "cp.to_block_mask(0, width='full')"),
    "to_fa4()": (PATTERN, HEADS, "cp.to_fa4(0)"),
    "to_flashmask() [8 KV heads]": (PATTERN, 8, "cp.to_flashmask(0)"),
    "to_flashinfer_variable() [4 KV heads, chunks]": (CHUNKS, 4, "cp.to_flashinfer_variable(0)"),
}


def child(name: str, n: int) -> None:
    """Run one case and print its figures as JSON (the parent reads the last line)."""
    import numpy as np
    import torch  # noqa: F401 (a user's process has torch and FlexAttention loaded already)
    from torch.nn.attention.flex_attention import BlockMask  # noqa: F401

    import patternc

    pattern, kv_heads, call = CASES[name]
    cp = patternc.compile(patternc.Stack(pattern, heads=HEADS, kv_heads=kv_heads), n)
    before = _rss_mib()
    out: dict = {"case": name, "n": n, "rss_before_mib": before}
    try:
        start = time.perf_counter()
        result = eval(call, {"cp": cp})
        out["first_s"] = time.perf_counter() - start
        start = time.perf_counter()
        eval(call, {"cp": cp})
        out["second_s"] = time.perf_counter() - start
        out["bytes"] = _bytes(result, np)
    except patternc.PatternError as err:
        out["refused"] = str(err)
    out["peak_mib"] = _peak_mib()
    print(json.dumps(out))


def _bytes(result, np) -> int:
    """Bytes of the arrays a result holds (distinct storages counted once)."""
    seen, total = set(), 0
    for value in (getattr(result, name, None) for name in dir(result)):
        if hasattr(value, "untyped_storage"):
            storage = value.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(value, np.ndarray):
            base = value.base if value.base is not None else value
            if id(base) not in seen:
                seen.add(id(base))
                total += base.nbytes
    return total


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def run(name: str, n: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(n)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {os.cpu_count()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--quick", action="store_true", help="128k tokens only")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n)
        return 0
    import torch

    print(f"{cpu()}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}; "
          f"{HEADS} heads of {PATTERN!r}")
    lengths = [2**17] if args.quick else [2**17, N]
    results = {}
    for n in lengths:
        for name in CASES:
            r = results[n, name] = run(name, n)
            if "refused" in r:
                print(f"n {n:>9,}  {name:<46} refused: {r['refused'][:110]}")
                continue
            print(f"n {n:>9,}  {name:<46} {r['first_s']:6.2f} s first, {r['second_s']:6.2f} s again; "
                  f"arrays {r['bytes'] / 2**20:8.1f} MiB; peak RSS {r['peak_mib']:7.0f} MiB "
                  f"({r['rss_before_mib']:.0f} before the call)", flush=True)
    for n in lengths:
        compact = results[n, "to_block_mask(width='compact')"]
        full = results[n, "to_block_mask(width='full')"]
        if "refused" not in full:
            print(f"n {n:,}: full-width tables {full['bytes'] / compact['bytes']:.1f}x the bytes of compact "
                  f"ones, built in {full['second_s'] / compact['second_s']:.2f}x the time")
    if not args.quick:
        c = results[N, "to_block_mask(width='compact')"]
        ok = c.get("peak_mib", 1e9) < 2048 and c.get("first_s", 1e9) < 3
        print(f"target at 1M x {HEADS} heads (< 2 GiB peak, < 3 s): peak {c['peak_mib']:.0f} MiB, "
              f"{c['first_s']:.2f} s first call -> {'met' if ok else 'NOT met'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
