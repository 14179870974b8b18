"""The search's targets, read from a finished run's ``trials.csv`` (or measured by running one).

    python benchmarks/search_targets.py outputs/search/<date>_<time>        # a run's report directory
    python benchmarks/search_targets.py outputs/search-multirun/<date>_<time>/<study> --near 0.02 --cost 0.25
    python benchmarks/search_targets.py --run                                # time the default search
    python benchmarks/search_targets.py --run experiment=large               # any patternc-search overrides
    python benchmarks/search_targets.py outputs/search/<date>_<time> --seeds 0 1 2 --cost 0.6

It prints what the issue's targets are about: how long the run took, how fast candidates were
rejected (compile and reach checks, before any kernel or training), which classic patterns a
feasible sampled pattern dominates, and the cheapest feasible pattern within ``--near`` of dense
causal's accuracy, against the ``--cost`` bound (a fraction of dense causal's measured time).

With ``--seeds`` it scores the classic references, the sampled patterns on the run's front and each
classic's best challenger (the most accurate sampled pattern at no more cost) again under each seed
(the run's own scorer, rebuilt from the run's Hydra overrides, scored in full: each seed its own
model initialisation and data, and with adaptation its own dense proxy; scores and dense proxies
are kept in the run's artifact store, or ``--store``, so seed 0's are the run's own and a rerun
scores nothing twice), and says which classics a sampled pattern dominates by more than 2 standard
errors of the difference of their mean scores, at no more measured cost (costs do not depend on
the seed).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import math
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf

import patternc
from search import record
from search.app import compose_config
from search.artifacts import open_store
from search.config import SearchConfig, SpaceConfig, TaskConfig, config_objects
from search.objective import keep_score, stored_score
from search.pareto import dominates, pareto_front
from search.scorer import make_scorer
from search.space import reference, suggest


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


def _params(row: dict, space: SpaceConfig) -> dict:
    """The trial's Optuna params from its ``param_*`` columns, typed as the space declares them."""
    out = {}
    for column, text in row.items():
        if not column.startswith("param_") or text == "":
            continue
        name = column.removeprefix("param_")
        spec = space.params.get(name)
        if spec is None or spec.type == "categorical":  # a layer or head choice, or a categorical
            choices = spec.choices if spec is not None else [*space.layer_choices, *space.head_choices]
            out[name] = next(c for c in choices if str(c) == text)
        else:
            out[name] = int(text) if spec.type == "int" else float(text)
    return out


def run_config(run: pathlib.Path) -> DictConfig:
    """A run's config, composed again from the overrides Hydra kept in its directory."""
    return compose_config(list(OmegaConf.load(run / ".hydra" / "overrides.yaml")))


def rescore(rows: list[dict], task: TaskConfig, space: SpaceConfig, settings: SearchConfig, seeds: list[int],
            near: float, cost_bound: float) -> dict[str, list[float]]:
    """Score the classics and the front's sampled patterns of ``rows`` (a run's ``trials.csv``) again
    under each of ``seeds``, print the comparison, and return each pattern's scores."""
    task = dataclasses.replace(task, train=dataclasses.replace(task.train, rungs=[]))  # scored in full
    kept = open_store(settings)
    scored = [r for r in rows if r["state"] == "COMPLETE" and r["accuracy"]]
    feasible = [r for r in scored if r["feasible"] == "True"]
    front = [feasible[i] for i in pareto_front([(float(r["accuracy"]), float(r["cost"])) for r in feasible],
                                               record.DIRECTIONS)]
    # every reference (a yardstick, feasible or not) and the front's sampled patterns
    picked = [r for r in scored if r["reference"]] + [r for r in front if not r["reference"]]
    # and each classic's best challenger: off the front when another classic dominates it
    for classic in (r for r in scored if r["reference"] and r["reference"] != "dense_causal"):
        cheaper = [r for r in feasible if not r["reference"] and float(r["cost"]) <= float(classic["cost"])]
        best = max(cheaper, key=lambda r: float(r["accuracy"]), default=None)
        if best is not None and best not in picked:
            picked.append(best)
    patterns = {}  # name -> (its trials.csv row, its proxy layout)
    for r in picked:
        candidate = reference(space, r["reference"]) if r["reference"] else \
            suggest(optuna.trial.FixedTrial(_params(r, space)), space)
        patterns[_name(r)] = (r, patternc.compile(candidate.proxy, space.proxy.n, block=space.proxy.block))
    references = [name for name, (r, _) in patterns.items() if r["reference"]]
    sampled = [name for name in patterns if name not in references]
    print(f"\nscoring the {len(references)} references and {len(sampled)} sampled patterns (the front's and "
          f"the classics' best challengers) "
          f"under seeds {seeds} (task.train.init={task.train.init})", flush=True)
    scores: dict[str, list[float]] = {name: [] for name in patterns}
    for seed in seeds:
        scorer = make_scorer(task, space, seed=seed)
        for name, (_, cp) in patterns.items():
            result = stored_score(kept, scorer, cp)  # the run's own (seed 0), or an earlier rescoring's
            if result is None:
                scorer.prepare(kept)  # once: the dense proxy, loaded or trained
                result = scorer.score(cp)
                if result.status == "ok":
                    keep_score(kept, scorer, cp, result)
            scores[name].append(result.score)
        print(f"  seed {seed}: " + ", ".join(f"{name} {scores[name][-1]:.3f}" for name in patterns),
              flush=True)
    mean = {name: float(np.mean(v)) for name, v in scores.items()}
    se = {name: float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
          for name, v in scores.items()}
    cost = {name: float(r["cost"]) for name, (r, _) in patterns.items()}
    spread = {name: (_number(r, "cost_low"), _number(r, "cost_high")) for name, (r, _) in patterns.items()}
    print(f"\n{'pattern':<26} {'cost':>6} {'cost range':>13}  {'mean +- se':>15}  seeds")
    for name in patterns:
        low, high = spread[name]
        shown = f"[{low:.2f}-{high:.2f}]" if low is not None and high is not None else ""
        print(f"{name:<26} {cost[name]:>5.3f}x {shown:>13}  {mean[name]:>7.3f} +- {se[name]:.3f}  "
              + " ".join(f"{x:.3f}" for x in scores[name]))
    print(f"\nclassics dominated (at no more cost) by a sampled pattern, in standard errors of "
          f"the difference of means over {len(seeds)} seeds (target: more than 2):")
    for classic in (name for name in references if name != "dense_causal"):
        margins = {s: (mean[s] - mean[classic]) / math.hypot(se[s], se[classic])
                   for s in sampled if cost[s] <= cost[classic]}
        if not margins:
            print(f"  {classic}: no sampled pattern on the front costs as little ({cost[classic]:.3f}x)")
            continue
        who = max(margins, key=margins.get)
        (_, high), (low, _) = spread[who], spread[classic]
        apart = high is not None and low is not None and high < low
        print(f"  {classic} ({mean[classic]:.3f} +- {se[classic]:.3f} at {cost[classic]:.3f}x): "
              f"{'dominated' if margins[who] > 2 else 'not dominated'}; best {who} ({mean[who]:.3f} +- "
              f"{se[who]:.3f} at {cost[who]:.3f}x) by {margins[who]:.1f} standard errors"
              + ("" if apart else ", their cost ranges overlap"))
    if "dense_causal" in mean:
        good = [s for s in sampled if mean[s] >= mean["dense_causal"] - near]
        cheapest = min(good, key=cost.get, default=None)
        print(f"\ncheapest sampled pattern whose mean is within {near} of dense causal's "
              f"({mean['dense_causal']:.3f}): " + ("none" if cheapest is None else
              f"{cheapest}, {mean[cheapest]:.3f} at {cost[cheapest]:.3f}x: "
              f"{'meets' if cost[cheapest] <= cost_bound else 'misses'} the {cost_bound}x bound"))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a search run's report directory (with trials.csv)")
    parser.add_argument("--run", nargs="*", metavar="OVERRIDE",
                        help="run patternc-search with these overrides first, timed, into a fresh directory")
    parser.add_argument("--near", type=float, default=0.02, help="accuracy margin below dense causal")
    parser.add_argument("--cost", type=float, default=0.25, help="cost bound, a fraction of dense causal's")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="score the classics and the front's sampled patterns again under these seeds")
    parser.add_argument("--store", default=None,
                        help="artifact store for the seeds' dense proxies (default: the run's own)")
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
    rows = read_trials(run)
    report(rows, args.near, args.cost)
    if args.seeds:
        cfg = run_config(run)
        task, space, _, settings = config_objects(cfg)
        if args.store is not None:
            settings = dataclasses.replace(settings, artifacts=args.store)
        rescore(rows, task, space, settings, args.seeds, args.near, args.cost)


if __name__ == "__main__":
    main()
