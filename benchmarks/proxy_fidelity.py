"""Does the proxy's score rank patterns as a longer budget, a longer proxy and other seeds would?

    python benchmarks/proxy_fidelity.py                                # default space and task, CPU
    python benchmarks/proxy_fidelity.py --sampled 10 --jobs 2 --out fidelity.json
    python benchmarks/proxy_fidelity.py task=hops space.proxy.layers=4 # any patternc-search override
    python benchmarks/proxy_fidelity.py --adapt --store outputs/fidelity_store  # adaptation's fidelity

The patterns: the classic ones at the space's scale (dense causal, sliding window, Longformer,
BigBird, Sparse Transformer strided and fixed, StreamingLLM, each written in fractions of ``n`` so
that the proxy length and the target length see the same shape), where the space lets a layer stay
dense the stacks of ``STACKS`` (a dense first half), and ``--sampled`` candidates drawn
at random from the space (those that compile within its density budget). Each is mapped onto the
proxy as a search maps it (``search.space.build``) and scored (``EvalResult.score``, the mean
accuracy over the task's difficulty buckets) at

- the default budget and proxy length, seeds 0, 1, 2 (the rows' mean and standard error);
- ``--budget-factor`` (4) times the training steps, seed 0;
- ``--n-factor`` (4) times the proxy length (and its block, so the block grid is the same), seed 0.

With ``--adapt`` the seeds' rows are the adaptation scores a search with ``task.train.init=dense``
records (``search.scorer.Adapt``: the dense proxy trained once per seed at the default budget, each
pattern adapted ``task.train.adapt_steps`` steps from it), set against from-scratch training at
``--budget-factor`` times the budget (seed 0); the longer proxy is left out. The dense proxies are
kept in ``--store`` (an artifact store), so a rerun or another job trains none again.

It prints the table and three Spearman rank correlations: (a) default budget against the longer
one, (b) default length against the longer one, (c) the mean over pairs of seeds; then which pairs
of classic patterns the default proxy cannot tell apart (means within 2 standard errors of their
difference). Results are appended to ``--out`` as they finish and a rerun with the same file skips
what is there, so a long run interrupted loses at most the training in flight.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import pathlib
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import optuna
from scipy.stats import spearmanr

import patternc
from search.app import compose_config
from search.artifacts import open_store
from search.config import SearchConfig, SpaceConfig, TaskConfig, config_objects
from search.evaluate import evaluate
from search.objective import density_vs_causal
from search.scorer import Adapt, make_scorer
from search.space import TEMPLATE, build, suggest

CLASSICS = {  # at the space's scale: every size a fraction of n (at n = 8192 the sizes in conf/pattern/)
    "dense causal": "causal",
    "sliding window": "causal & window(ceil(n / 8))",
    "longformer": "causal & (window(ceil(n / 32)) | global(ceil(n / 512)))",
    "bigbird": "causal & (window(ceil(n / 64)) | global(ceil(n / 64)) | random(3, seed=0))",
    "sparse transformer strided": "causal & (window(round(sqrt(n))) | stride(round(sqrt(n))))",
    "sparse transformer fixed": "causal & fixed(n // 16, max(1, n // 1024))",
    "streaming llm": "causal & (sink(4) | window(ceil(n / 4)))",
}
# Stacks that are not classics but that the spaces can express, scored beside them: a dense first half
# of the target's layers with the fixed pattern in the second (what majority rewards, measured at 0.61x
# dense's cost in the default search).
STACKS = {
    "dense first half + fixed": {"expr": "causal & fixed(n // 16, max(1, n // 1024))",
                                 "layers": ["causal", TEMPLATE]},
}
SEEDS = (0, 1, 2)


def configs(overrides: list[str]) -> tuple[TaskConfig, SpaceConfig]:
    task, space, _, _ = config_objects(compose_config(overrides))
    return task, space


def classic(space: SpaceConfig, expr: str, layers: list[str] | None = None):
    """``expr`` as the space's template, in every proxy layer or per ``layers`` (template or causal)."""
    return build(dataclasses.replace(space, template=expr, params={}), {},
                 layers or [TEMPLATE] * space.proxy.layers)


def sampled(space: SpaceConfig, count: int, seed: int) -> dict[str, dict]:
    """``count`` random candidates of the space that compile within its density budget at target.n:
    {name: {"values": ..., "layers": ...}}."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    found: dict[str, dict] = {}
    for _ in range(50 * count):
        if len(found) == count:
            break
        trial = study.ask()
        candidate = suggest(trial, space)
        try:
            target = patternc.compile(candidate.target, space.target.n, block=space.target.block)
            patternc.compile(candidate.proxy, space.proxy.n, block=space.proxy.block)
        except patternc.PatternError:
            continue
        if density_vs_causal(target) <= space.density_budget:
            values = {k: v for k, v in trial.params.items() if not k.startswith("layer")}
            layers = [trial.params.get(f"layer{p}", TEMPLATE) for p in range(space.proxy.layers)]
            found[f"sampled {len(found)}"] = {"values": values, "layers": layers}
    return found


def candidate_of(space: SpaceConfig, spec: dict):
    if "expr" in spec:
        return classic(space, spec["expr"], spec.get("layers"))
    return build(space, spec["values"], spec["layers"])


_SCORERS: dict[tuple, Adapt] = {}  # (seed, store) -> the prepared adaptation scorer of this process


def _adapted(job: dict, cp) -> object:
    """The pattern's adaptation score (``search.scorer.Adapt``) from the dense proxy of ``job``'s seed."""
    key = (job["seed"], job["store"])
    if key not in _SCORERS:
        task = dataclasses.replace(job["task"], train=dataclasses.replace(
            job["task"].train, init="dense", threads=job["threads"], rungs=[]))
        scorer = make_scorer(task, job["space"], seed=job["seed"])
        scorer.prepare(open_store(SearchConfig(artifacts=job["store"])) if job["store"] else None)
        _SCORERS[key] = scorer
    return _SCORERS[key].score(cp)


def run_one(job: dict) -> dict:
    """One training: ``job`` holds the pattern, the variant (seed, steps factor, length factor,
    adaptation) and the configs as dicts (a worker process rebuilds them)."""
    task, space = job["task"], job["space"]
    space = dataclasses.replace(space, proxy=dataclasses.replace(
        space.proxy, n=space.proxy.n * job["n_factor"], block=space.proxy.block * job["n_factor"]))
    task = dataclasses.replace(task, n=space.proxy.n, train=dataclasses.replace(
        task.train, steps=task.train.steps * job["steps_factor"], threads=job["threads"]))
    proxy = candidate_of(space, job["spec"]).proxy
    cp = patternc.compile(proxy, space.proxy.n, block=space.proxy.block)
    start = time.perf_counter()
    result = _adapted(job, cp) if job.get("adapt") else evaluate(cp, task, seed=job["seed"])
    return {"key": job["key"], "score": result.score, "accuracy": result.accuracy, "buckets": result.buckets,
            "seconds": round(time.perf_counter() - start, 1)}


def variants(budget_factor: int, n_factor: int, adapt: bool = False) -> dict[str, dict]:
    name = "adapted, seed" if adapt else "seed"
    out = {f"{name} {s}": {"seed": s, "steps_factor": 1, "n_factor": 1, "adapt": adapt} for s in SEEDS}
    out[f"{budget_factor}x steps"] = {"seed": 0, "steps_factor": budget_factor, "n_factor": 1}
    if not adapt:
        out[f"{n_factor}x n"] = {"seed": 0, "steps_factor": 1, "n_factor": n_factor}
    return out


def spearman(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b).statistic) if len(a) > 2 else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="patternc-search overrides: task=hops, space=...")
    parser.add_argument("--sampled", type=int, default=10, help="random candidates of the space")
    parser.add_argument("--budget-factor", type=int, default=4)
    parser.add_argument("--n-factor", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, one process each")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training")
    parser.add_argument("--out", default=None, help="JSON results, appended as they finish; reruns resume")
    parser.add_argument("--adapt", action="store_true",
                        help="score the seeds' rows by adaptation from the dense proxy "
                             "(task.train.adapt_steps)")
    parser.add_argument("--store", default=None, help="artifact store for the dense proxies (--adapt)")
    args = parser.parse_args()
    task, space = configs(args.overrides)
    specs = {name: {"expr": expr} for name, expr in CLASSICS.items()}
    if space.proxy.layers == 2 and "causal" in space.layer_choices:
        specs.update(STACKS)
    specs.update(sampled(space, args.sampled, seed=0))
    kinds = variants(args.budget_factor, args.n_factor, args.adapt)
    done: dict[str, dict] = {}
    out = pathlib.Path(args.out) if args.out else None
    if out is not None and out.exists():
        done = {r["key"]: r for r in map(json.loads, out.read_text().splitlines()) if r.get("key")}
    jobs = [{"key": f"{name} | {kind}", "spec": spec, "task": task, "space": space, "threads": args.threads,
             "store": args.store, **variant}
            for kind, variant in kinds.items() for name, spec in specs.items()]
    todo = [job for job in jobs if job["key"] not in done]
    print(f"space {space.name}, task {task.name}, proxy n {space.proxy.n} ({space.proxy.layers} layers x "
          f"{space.proxy.heads} heads), {task.train.steps} steps; {len(jobs)} trainings, {len(todo)} to run, "
          f"{args.jobs} at once, {os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()

    def keep(result: dict) -> None:
        done[result["key"]] = result
        print(f"  {result['key']}: {result['score']:.3f} ({result['seconds']} s)", flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(json.dumps(result) + "\n")

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for result in pool.map(run_one, todo):
                keep(result)
    else:
        for job in todo:
            keep(run_one(job))
    print(f"{time.perf_counter() - start:.0f} s of training\n")
    report(specs, kinds, done, space)


def report(specs: dict, kinds: dict, done: dict, space: SpaceConfig) -> None:
    score = {(name, kind): done[f"{name} | {kind}"]["score"] for name in specs for kind in kinds}
    seeds = list(kinds)[:len(SEEDS)]
    longer_steps, longer_n = [*list(kinds)[len(SEEDS):], None][:2]
    density = {name: density_vs_causal(patternc.compile(candidate_of(space, spec).target, space.target.n,
                                                         block=space.target.block))
               for name, spec in specs.items()}
    mean = {name: float(np.mean([score[name, k] for k in seeds])) for name in specs}
    se = {name: float(np.std([score[name, k] for k in seeds], ddof=1) / math.sqrt(len(seeds)))
          for name in specs}
    width = max(map(len, specs)) + 2
    print(f"{'pattern':<{width}}{'density':>8}  {'mean +- se (3 seeds)':>21}  {longer_steps:>9}  "
          f"{longer_n or '':>7}  expression or parameters")
    for name, spec in specs.items():
        layers = spec.get("layers", [TEMPLATE])
        what = (spec.get("expr") or json.dumps(spec["values"])) + (
            f" layers {layers}" if any(c != TEMPLATE for c in layers) else "")
        print(f"{name:<{width}}{density[name]:>8.3f}  {mean[name]:>13.3f} +- {se[name]:.3f}  "
              f"{score[name, longer_steps]:>9.3f}  "
              f"{'' if longer_n is None else format(score[name, longer_n], '.3f'):>7}  {what}")
    names = list(specs)
    base = [score[name, seeds[0]] for name in names]
    a = spearman(base, [score[name, longer_steps] for name in names])
    b = None if longer_n is None else spearman(base, [score[name, longer_n] for name in names])
    c = float(np.mean([spearman([score[name, x] for name in names], [score[name, y] for name in names])
                       for x, y in itertools.combinations(seeds, 2)]))
    print(f"\nSpearman rank correlation over {len(names)} patterns (target: each at least 0.8):")
    print(f"  (a) {seeds[0]} vs {longer_steps} from scratch: {a:.3f}")
    if b is not None:
        print(f"  (b) default proxy length vs {longer_n}: {b:.3f}")
    print(f"  (c) across seeds (mean of the 3 pairs): {c:.3f}")
    ties = [(x, y) for x, y in itertools.combinations(CLASSICS, 2)
            if abs(mean[x] - mean[y]) <= 2 * math.hypot(se[x], se[y])]
    pairs = len(CLASSICS) * (len(CLASSICS) - 1) // 2
    print(f"\nClassic patterns the default proxy cannot tell apart (within 2 standard errors): {len(ties)} "
          f"of {pairs} pairs" + "".join(f"\n  {x} ~ {y}: {mean[x]:.3f} vs {mean[y]:.3f}" for x, y in ties))


if __name__ == "__main__":
    main()
