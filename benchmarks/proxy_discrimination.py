"""Do the proxy tasks tell patterns apart? Accuracy and wall time of classic patterns at proxy scale.

    python benchmarks/proxy_discrimination.py            # both tasks, default settings, seed 0
    python benchmarks/proxy_discrimination.py --quick    # 40 steps: a smoke run of the script

Patterns are written at the proxy length (n = 128) in the spirit of their papers, on the tiny
model's 2 layers x 4 heads: Longformer-like = window + global tokens with dilated heads,
BigBird-like = window + global + random blocks, Sparse Transformer strided = half the heads local,
half strided by sqrt(n). The last line reruns the first evaluation and says whether it is identical.
"""

from __future__ import annotations

import argparse
import time

import torch

from patternc.stack import Override, Stack
from search import MajorityConfig, MQARConfig, evaluate

LAYERS, HEADS = 2, 4

PATTERNS = {
    "dense causal": Stack(default="causal", layers=LAYERS, heads=HEADS),
    "causal & window(16)": Stack(default="causal & window(16)", layers=LAYERS, heads=HEADS),
    "Longformer-like": Stack(default="causal & (window(16) | global(4))", layers=LAYERS, heads=HEADS,
                             overrides=(Override("causal & (dilated(16, 4) | global(4))", heads=(2, 4)),)),
    "BigBird-like": Stack(default="causal & (window(16) | global(4) | random(2, seed=0))",
                          layers=LAYERS, heads=HEADS, block=(16, 16)),
    "Sparse Transformer strided": Stack(
        default="causal & window(round(sqrt(n)))", layers=LAYERS, heads=HEADS,
        overrides=(Override("causal & stride(round(sqrt(n)))", heads=(2, 4)),)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 training steps, 64 held-out sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    tasks = [MQARConfig(), MajorityConfig()]
    for task in tasks:
        task.train.threads = args.threads
        if args.quick:
            task.train.steps, task.train.eval_sequences = 40, 64
    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, seed {args.seed}, "
          f"{tasks[0].train.steps} steps")
    first = None
    for task in tasks:
        print(f"\n{task.name} (n = {task.n})")
        header = None
        for name, stack in PATTERNS.items():
            r = evaluate(stack, task, seed=args.seed)
            first = first or (stack, task, r)
            if header is None:
                header = f"{'pattern':<28} {'accuracy':>8}  " + "  ".join(f"{b:>10}" for b in r.buckets)
                print(header + f"  {'chance':>6}  {'seconds':>7}")
            cells = "  ".join(f"{'-' if a is None else f'{a:.3f}':>10}" for a in r.buckets.values())
            accuracy = "diverged" if r.accuracy is None else f"{r.accuracy:.3f}"
            print(f"{name:<28} {accuracy:>8}  {cells}  {r.chance:6.3f}  {r.wall_seconds:7.1f}", flush=True)
    stack, task, r = first
    start = time.perf_counter()
    again = evaluate(stack, task, seed=args.seed)
    same = again.accuracy == r.accuracy and again.loss_curve == r.loss_curve
    print(f"\nrerun of the first evaluation ({time.perf_counter() - start:.1f} s): "
          f"{'identical' if same else 'DIFFERENT'} (accuracy {r.accuracy} then {again.accuracy})")


if __name__ == "__main__":
    main()
