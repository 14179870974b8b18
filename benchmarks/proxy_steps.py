"""How much training does a sparse pattern need to match dense? Held-out accuracy against steps.

    python benchmarks/proxy_steps.py                                   # majority, 400 and 1600 steps, CPU
    python benchmarks/proxy_steps.py --device cuda --steps 400 1600 6400 --jobs 4 --out steps.json

Every pattern is trained from the same seed at every step count (the learning-rate schedule spans
the whole run, so 1600 steps is a separate run, not 400 steps continued). Sparse patterns route
information through more hops than dense attention and learn more slowly: the gap at 400 steps
(the default search's budget) overstates the gap at convergence. The figures say how many steps a
search needs before its accuracies speak for the patterns rather than for the training budget.
The block density at ``--n-target`` (128-token tiles, as a fraction of dense causal's) is printed
for scale. ``--jobs`` runs that many trainings at once in separate processes (a GPU has room for
several tiny models; on 2 CPU cores keep 1).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

import patternc
from search import MajorityConfig, MQARConfig, evaluate
from search.objective import density_vs_causal

PATTERNS = {  # the fixed_window space's references and one of its sampled candidates
    "dense causal": "causal",
    "sliding window n/8": "causal & window(ceil(n / 8))",
    "sparse transformer fixed": "causal & fixed(n // 16, max(1, n // 1024))",
    "fixed n/8 + window": "causal & (window(ceil(0.05 * n)) | fixed(n // 8, max(1, round(0.1 * n / 8))))",
}
TASKS = {"majority": MajorityConfig, "mqar": MQARConfig}


def run_one(job: tuple[str, str, int, str, int | None, int]) -> dict:
    name, task_name, steps, device, threads, seed = job
    task = TASKS[task_name]()
    task.train.steps, task.train.device, task.train.threads = steps, device, threads
    r = evaluate(PATTERNS[name], task, seed=seed)
    return dict(pattern=name, steps=steps, accuracy=r.accuracy, buckets=r.buckets,
                seconds=round(r.wall_seconds, 1), final_loss=r.loss_curve[-1][1] if r.loss_curve else None)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="majority")
    parser.add_argument("--steps", type=int, nargs="+", default=[400, 1600])
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training (CPU)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, one process each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-target", type=int, default=16384)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA not available: skipping")
        return
    jobs = [(name, args.task, steps, args.device, args.threads, args.seed)
            for steps in sorted(args.steps) for name in args.patterns]
    print(f"{args.task}, seed {args.seed}, {args.device}, torch {torch.__version__}, {args.jobs} at once",
          flush=True)
    start = time.perf_counter()
    if args.jobs > 1:  # spawn: CUDA cannot be used in a forked child
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_one, jobs))
    else:
        results = [run_one(job) for job in jobs]
    by = {(r["pattern"], r["steps"]): r for r in results}
    steps = sorted(args.steps)
    print(f"\n{'pattern':<26} {'density@' + str(args.n_target):>14}  "
          + "  ".join(f"{f'{s} steps':>11}" for s in steps) + f"  {'buckets at ' + str(steps[-1]):>30}")
    for name in args.patterns:
        last = by[name, steps[-1]]
        cells = "  ".join(f"{_score(by[name, s]['accuracy']):>11}" for s in steps)
        buckets = " ".join(f"{k} {_score(v)}" for k, v in last["buckets"].items())
        density = density_vs_causal(patternc.compile(PATTERNS[name], args.n_target, block=128))
        print(f"{name:<26} {density:>14.3f}  {cells}  {buckets:>30}")
    slowest = ", ".join(f"{s} steps {max(by[n, s]['seconds'] for n in args.patterns):.0f}" for s in steps)
    print(f"\nslowest training, seconds: {slowest}; wall {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(task=args.task, device=args.device, seed=args.seed, results=results), f, indent=1)


if __name__ == "__main__":
    main()
