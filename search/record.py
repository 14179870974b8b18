"""What a search trial records: the user-attribute keys shared by the objective and the report.

Values: ``[accuracy, cost]``, directions ``[maximize, minimize]``, where accuracy is the proxy's
held-out accuracy averaged over the task's difficulty buckets (``EvalResult.score``) and cost the measured
latency at ``target.n`` as a fraction of dense causal attention's (mean over the stack's layers).
Feasibility is Optuna's own: ``trial.set_constraint("density", density - budget)``,
``trial.set_constraint("proxy_density", proxy_density - budget)`` and
``trial.set_constraint("mixing", 0 or 1)``; a trial is feasible when every constraint is <= 0.

A sampled candidate that fails a constraint is rejected before any training: its constraints and
``REJECTED`` reason are recorded and the trial is PRUNED (no made-up objective values). Reference
trials (classic patterns, ``REFERENCE`` set) are always trained and scored, so they can be plotted
beside the front; an infeasible one is COMPLETE with its constraints > 0 and never on the front.
"""

from __future__ import annotations

__all__ = ["ACCURACY", "BUCKETS", "CHANCE", "COST", "DENSITY", "DIRECTIONS", "DURATIONS", "EXPRESSION",
           "FIDELITY", "KV", "LAYOUT_KEY", "MIXING_CERTIFIED", "MIXING_DEPTH", "POOLED_ACCURACY",
           "PROXY_DENSITY", "PROXY_STACK", "REFERENCE", "REJECTED", "REUSED_FROM", "SCREEN_ACCURACY",
           "STACK", "STATUS", "WORKER"]

DIRECTIONS = ("maximize", "minimize")  # accuracy, cost

REFERENCE = "reference"  # name of the classic pattern a reference trial reproduces (absent otherwise)
STACK = "stack"  # the target's stack as a dict (patternc.Stack.to_dict()): drops into conf/pattern/
PROXY_STACK = "proxy_stack"  # the stack the proxy model trained under (search.space.build maps it)
EXPRESSION = "expression"  # one line: the expression, or "layer l: expr; ..." when layers differ
STATUS = "status"  # "ok", "rejected" (failed a constraint, never trained) or "diverged" (NaN loss)
REJECTED = "rejected"  # why a candidate was rejected, in words
DENSITY = "density"  # mean block density at target.n, as a fraction of dense causal's block density
PROXY_DENSITY = "proxy_density"  # share of the causal pairs allowed at proxy.n (what the model sees)
MIXING_DEPTH = "mixing_depth"  # layers until every causal pair is reached at target.n; None: unknown
MIXING_CERTIFIED = "mixing_certified"  # True: certainly mixes within target.layers; False: bounds differ
KV = "kv"  # {"ratio", "bytes", "max_live_keys"}: the target's KV cache against a dense one
LAYOUT_KEY = "layout_key"  # hash of every layout at target.n and proxy.n: equal keys score alike
REUSED_FROM = "reused_from"  # the earlier trial whose result a candidate with equal layouts reused
FIDELITY = "fidelity"  # "full" (trained its whole budget) or "screen" (stopped at the checkpoint)
SCREEN_ACCURACY = "screen_accuracy"  # the checkpoint's held-out accuracy (with task.train.screen)
COST = "cost"  # {"ratio", "seconds", "baseline_seconds", "backend", "n", "dtype", "device", ...}
ACCURACY = "accuracy"  # the first objective value: held-out accuracy, the mean over difficulty buckets
POOLED_ACCURACY = "pooled_accuracy"  # held-out accuracy over every answer, whatever its bucket
BUCKETS = "buckets"  # {bucket name: accuracy}
CHANCE = "chance"  # the task's chance accuracy
DURATIONS = "durations"  # {"compile", "reach", "cost", "train"}: seconds of each stage
WORKER = "worker"  # {"index": search.worker, "host", "pid"}: who ran the trial
