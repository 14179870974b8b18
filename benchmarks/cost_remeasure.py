"""A finished search's costs measured again: each scored trial's target layout timed afresh (no
figure read from the disk cache) beside the cost the trial recorded, to see what the machine's load
did to the search's cost axis.

    python benchmarks/cost_remeasure.py outputs/search/<date>_<time>
    python benchmarks/cost_remeasure.py outputs/calibration_demo/stories260K/duo_attention --above 1.0

The run directory is one a search wrote (Hydra's ``.hydra/overrides.yaml`` rebuilds its config, and
so its study, kernel and target). Quote ``uptime`` with the figures: a quiet machine is the point.
"""

from __future__ import annotations

import argparse
import pathlib

from search_targets import run_config

import patternc
from search import record
from search.config import config_objects
from search.definition import definition
from search.objective import measured_cost
from search.study import load_existing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a search run's directory (with .hydra/overrides.yaml)")
    parser.add_argument("--above", type=float, default=None,
                        help="only trials whose recorded cost was above this ratio to dense")
    args = parser.parse_args()
    cfg = run_config(pathlib.Path(args.run_dir))
    task, space, kernel, settings = config_objects(cfg)
    study = load_existing(settings, definition(task, space, kernel, cfg.seed))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        found = record.read(trial)
        if trial.state.name != "COMPLETE" or found.cost is None or found.stack is None:
            continue
        if args.above is not None and found.cost["ratio"] <= args.above:
            continue
        cp = patternc.compile(patternc.Stack.from_dict(found.stack), space.target.n, block=space.target.block)
        again = measured_cost(cp, kernel, space.target, cache=False)
        rows.append((trial.number, found.reference or "", found.cost, again, found.expression))
        low, high = (found.cost.get(key, float("nan")) for key in ("ratio_low", "ratio_high"))
        print(f"trial {trial.number:>3} {found.reference or '':<20} recorded {found.cost['ratio']:6.3f}x "
              f"[{low:.2f}-{high:.2f}]  again {again['ratio']:6.3f}x "
              f"[{again['ratio_low']:.2f}-{again['ratio_high']:.2f}]"
              f"  | {found.expression}", flush=True)
    above = [r for r in rows if r[3]["ratio"] > 1.0]
    print(f"\n{len(rows)} trials measured again at n = {space.target.n}: {len(above)} above dense's cost "
          f"(recorded: {sum(r[2]['ratio'] > 1.0 for r in rows)})"
          + "".join(f"\n  trial {n} {ref} {again['ratio']:.3f}x" for n, ref, _, again, _ in above))


if __name__ == "__main__":
    main()
