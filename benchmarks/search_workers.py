"""One study, one worker against N workers launched by Hydra, side by side in one run.

    python benchmarks/search_workers.py -- task.train.steps=400   # 4 workers via submitit_local, 12 trials
    python benchmarks/search_workers.py --workers 2 --launcher joblib

Both runs are the same ``patternc-search -m experiment=tiny`` search (its tiny model, ``--trials``
trials, one torch thread per process, ``OMP_NUM_THREADS=1``, so that N workers on fewer cores do not
oversubscribe them), each on a fresh
study in the PostgreSQL server of ``--storage`` (default: ``$PATTERNC_TEST_POSTGRES``). It prints
both wall times, from the command's start to its end (imports, launcher and report included), their
ratio, and whether every trial is accounted for: COMPLETE, PRUNED (rejected, duplicate, over budget)
or FAIL and retried, none RUNNING or WAITING, each reference scored once.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
import uuid

import optuna

from search import record
from search.accounting import account, counted


def run(storage: str, workers: int, trials: int, launcher: str, extra: list[str], folder: str) -> dict:
    study = f"bench-workers-{workers}-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "search", "-m", "experiment=tiny", f"search.storage={storage}",
               f"search.study={study}", f"search.n_trials={trials}", "task.train.threads=1",
               f"hydra.sweep.dir={folder}/{study}", *extra]
    if workers > 1:
        command += [f"hydra/launcher={launcher}", f"search.workers={workers}"]
        if launcher == "joblib":
            command.append(f"hydra.launcher.n_jobs={workers}")
    # both runs measure every cost; one thread per process for torch everywhere (training and kernels):
    # N workers with a thread per core each would oversubscribe the cores many times over
    env = {**os.environ, "PATTERNC_CACHE_DIR": f"{folder}/cache-{study}", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=folder, env=env)
    wall = time.perf_counter() - start
    loaded = optuna.load_study(study_name=study, storage=storage)
    found = loaded.get_trials()
    references = loaded.user_attrs["definition"]["space"]["references"]
    optuna.delete_study(study_name=study, storage=storage)
    scored = collections.Counter(record.read(t).reference for t in found
                                 if counted(t) and record.read(t).reference is not None)
    return {"wall": wall, "trials": found, "account": account(found, trials, references),
            "references_once": sorted(scored) == sorted(references) and set(scored.values()) == {1},
            "by_worker": collections.Counter((record.read(t).worker or {}).get("index") for t in found
                                             if counted(t))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--launcher", default="submitit_local", choices=["submitit_local", "joblib"])
    parser.add_argument("--storage", default=os.environ.get("PATTERNC_TEST_POSTGRES"))
    parser.add_argument("overrides", nargs="*", help="more patternc-search overrides, after --")
    args = parser.parse_args()
    if not args.storage:
        parser.error("give --storage postgresql+psycopg2://... or set PATTERNC_TEST_POSTGRES")
    print(f"load before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder:
        one = run(args.storage, 1, args.trials, args.launcher, args.overrides, folder)
        many = run(args.storage, args.workers, args.trials, args.launcher, args.overrides, folder)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    for label, result in (("1 worker", one), (f"{args.workers} workers ({args.launcher})", many)):
        states = collections.Counter(t.state.name for t in result["trials"])
        print(f"{label}: {result['wall']:.1f} s wall; {dict(states)}; {result['account'].describe()}; "
              f"references scored once: {result['references_once']}; counted trials by worker: "
              f"{dict(sorted(result['by_worker'].items()))}")
    print(f"speed-up of {args.workers} workers over 1: {one['wall'] / many['wall']:.2f}x")


if __name__ == "__main__":
    main()
