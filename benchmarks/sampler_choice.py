"""Which sampler finds the best front on a space: TPE, GP, NSGA-II and random, each run as the search
runs (``search.study.run_search``: references, initial design, the space's checks) over a few seeds,
and compared by the hypervolume of the feasible front each finds.

    python benchmarks/sampler_choice.py                                   # the default space and task
    python benchmarks/sampler_choice.py task.train.adapt_steps=0 --trials 30 --seeds 0 1 2
    python benchmarks/sampler_choice.py --samplers tpe gp space=window_global

Hypervolume (accuracy up, cost down) is the area the front dominates above accuracy 0 and below
``--ref-cost`` times dense causal's cost: one number for how much of the trade-off a sampler
uncovered. The scorer is the config's (``task.train.init=dense`` by default: adapted candidates;
``task.train.adapt_steps=0`` scores them zero-shot, the cheapest measurement of the same space).
Each (sampler, seed) run is its own study in a scratch directory, and reuses scores across runs
only through the artifact store (a fresh one, or ``--store``: the same layout is never scored
twice, and the dense proxy is trained once), so the comparison costs
what the distinct candidates cost. Prints one line per run, then the mean and standard error per
sampler, best first.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import pathlib
import statistics
import tempfile
import time

from search.app import compose_config
from search.config import config_objects
from search.pareto import pareto_front
from search.record import comparable, feasible
from search.study import run_search


def hypervolume(points: list[tuple[float, float]], ref_cost: float) -> float:
    """Area dominated by ``points`` (accuracy, cost) within accuracy >= 0 and cost <= ``ref_cost``.

    >>> hypervolume([(0.5, 0.5), (1.0, 1.0)], ref_cost=2.0)  # 0.5 x 1.5 + 0.5 x 1.0
    1.25
    >>> hypervolume([], ref_cost=1.0)  # nothing feasible found
    0.0
    """
    front = sorted({(a, c) for a, c in points if c < ref_cost and a > 0}, key=lambda p: p[1])
    area, best = 0.0, 0.0
    for (accuracy, cost), nxt in itertools.pairwise([*front, (None, ref_cost)]):
        best = max(best, accuracy)
        area += best * (nxt[1] - cost)
    return area


def run(sampler: str, seed: int, trials: int, overrides: list[str], store: pathlib.Path,
        ref_cost: float) -> dict:
    cfg = compose_config([*overrides, f"search.sampler={sampler}", f"search.seed={seed}",
                          f"search.n_trials={trials}"])
    task, space, kernel, settings = config_objects(cfg)
    with tempfile.TemporaryDirectory() as folder:
        settings = dataclasses.replace(settings, storage=f"sqlite:///{folder}/s.db", artifacts=str(store))
        start = time.perf_counter()
        study = run_search(task, space, kernel, settings, seed=cfg.seed, progress=False)
        seconds = time.perf_counter() - start
        pool = [t for t in study.trials if comparable(t) and feasible(t)]
        best = pareto_front([t.values for t in pool], ("maximize", "minimize"))
        points = [tuple(pool[i].values) for i in best]
    return {"sampler": sampler, "seed": seed, "hypervolume": hypervolume(points, ref_cost),
            "front": sorted(points, key=lambda p: p[1]), "seconds": seconds,
            "trials": len(study.trials), "scored": sum(t.state.name == "COMPLETE" for t in study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "gp", "nsga2", "random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=36)
    parser.add_argument("--ref-cost", type=float, default=1.0, help="hypervolume's cost bound (x dense)")
    parser.add_argument("--store", default=None,
                        help="artifact store to reuse (the dense proxy, scores); default: a fresh one")
    args, overrides = parser.parse_known_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        store = args.store or scratch
        for seed in args.seeds:
            for sampler in args.samplers:
                r = run(sampler, seed, args.trials, overrides, pathlib.Path(store), args.ref_cost)
                results.setdefault(sampler, []).append(r["hypervolume"])
                front = ", ".join(f"{a:.3f}@{c:.2f}x" for a, c in r["front"])
                print(f"{sampler:>6} seed {seed}: hypervolume {r['hypervolume']:.4f} ({r['scored']} scored "
                      f"of {r['trials']} trials, {r['seconds']:.0f} s) front {front}", flush=True)
    print(f"\nhypervolume within cost <= {args.ref_cost}x dense, mean +- standard error over seeds "
          f"{args.seeds}, {args.trials} trials each:")
    for sampler, values in sorted(results.items(), key=lambda kv: -statistics.mean(kv[1])):
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        print(f"  {sampler:>6}: {statistics.mean(values):.4f} +- {se:.4f}")


if __name__ == "__main__":
    main()
