"""The search's targets, read from a finished run's ``trials.csv`` (or measured by running one).

    python benchmarks/search_targets.py outputs/search/<date>_<time>        # a run's report directory
    python benchmarks/search_targets.py outputs/search-multirun/<date>_<time>/<study> --near 0.02 --cost 0.25
    python benchmarks/search_targets.py --run                                # time the default search
    python benchmarks/search_targets.py --run experiment=large               # any patternc-search overrides

It prints what the issue's targets are about: how long the run took, how fast candidates were
rejected (compile and reach checks, before any kernel or training), which classic patterns a
feasible sampled pattern dominates, and the cheapest feasible pattern within ``--near`` of dense
causal's accuracy, against the ``--cost`` bound (a fraction of dense causal's measured time).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import pathlib
import statistics
import subprocess
import sys
import time

from search import record
from search.pareto import dominates


def read_trials(run: pathlib.Path) -> list[dict]:
    with open(run / "trials.csv") as f:
        return list(csv.DictReader(f))


def _number(row: dict, key: str) -> float | None:
    return float(row[key]) if row.get(key) not in (None, "") else None


def _name(row: dict) -> str:
    return row["reference"] or f"trial {row['number']}"


def report(rows: list[dict], near: float, cost_bound: float) -> None:
    scored = [r for r in rows if r["state"] == "COMPLETE" and r["accuracy"]]
    rejected = [r for r in rows if r["status"] == "rejected"]
    print(f"trials: {len(scored)} scored, {len(rejected)} rejected, {len(rows)} in all")
    stamps = [datetime.datetime.fromisoformat(r[key]) for r in rows
              for key in ("datetime_start", "datetime_complete") if r.get(key)]
    if stamps:
        print(f"elapsed: {(max(stamps) - min(stamps)).total_seconds():.1f} s from the first trial's start "
              "to the last one's end")
    if rejected:
        ms = [1e3 * sum(_number(r, k) or 0.0 for k in ("seconds_compile", "seconds_reach")) for r in rejected]
        print(f"rejection before any kernel or training: median {statistics.median(ms):.0f} ms, "
              f"max {max(ms):.0f} ms")
    dense = next((r for r in scored if r["reference"] == "dense_causal"), None)
    if dense is not None:
        print(f"dense causal: accuracy {float(dense['accuracy']):.4f}, cost {float(dense['cost']):.3f}x")
    feasible = [r for r in scored if r["feasible"] == "True"]
    sampled = [r for r in feasible if not r["reference"]]
    values = {id(r): (float(r["accuracy"]), float(r["cost"])) for r in scored}
    for classic in (r for r in scored if r["reference"] and r["reference"] != "dense_causal"):
        winners = [r for r in sampled if dominates(values[id(r)], values[id(classic)], record.DIRECTIONS)]
        best = max(winners, key=lambda r: values[id(r)][0], default=None)
        print(f"{classic['reference']} ({values[id(classic)][0]:.3f} at {values[id(classic)][1]:.3f}x): "
              + (f"dominated by {len(winners)} sampled patterns, e.g. {_name(best)} "
                 f"({values[id(best)][0]:.3f} at {values[id(best)][1]:.3f}x)" if best else
                 "not dominated by a sampled pattern"))
    if dense is not None:
        floor = float(dense["accuracy"]) - near
        good = [r for r in feasible if float(r["accuracy"]) >= floor]
        cheapest = min(good, key=lambda r: float(r["cost"]), default=None)
        if cheapest is None:
            print(f"no feasible pattern within {near} of dense causal's accuracy")
        else:
            cost = float(cheapest["cost"])
            print(f"cheapest feasible within {near} of dense: {_name(cheapest)} accuracy "
                  f"{float(cheapest['accuracy']):.4f} at {cost:.3f}x dense causal's time: "
                  f"{'meets' if cost <= cost_bound else 'misses'} the {cost_bound}x bound "
                  f"| {cheapest['expression']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a search run's report directory (with trials.csv)")
    parser.add_argument("--run", nargs="*", metavar="OVERRIDE",
                        help="run patternc-search with these overrides first, timed, into a fresh directory")
    parser.add_argument("--near", type=float, default=0.02, help="accuracy margin below dense causal")
    parser.add_argument("--cost", type=float, default=0.25, help="cost bound, a fraction of dense causal's")
    args = parser.parse_args()
    if args.run is not None:
        name = f"targets_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        run = pathlib.Path("outputs/search") / name
        fresh = [] if any(o.startswith("search.study=") for o in args.run) else [f"search.study={name}"]
        start = time.perf_counter()  # a fresh study unless one is named: the same name would resume
        command = [sys.executable, "-m", "search", *args.run, *fresh, f"hydra.run.dir={run}"]
        subprocess.run(command, check=True)
        print(f"\npatternc-search {' '.join(args.run)}: {time.perf_counter() - start:.1f} s wall")
    elif args.run_dir:
        run = pathlib.Path(args.run_dir)
    else:
        parser.error("give a run directory, or --run")
    report(read_trials(run), args.near, args.cost)


if __name__ == "__main__":
    main()
