"""What a search trial records: one frozen ``TrialRecord``, written once per trial and read once.

Values: ``[accuracy, cost]``, directions ``[maximize, minimize]``, where accuracy is the scorer's
quality on held-out data averaged over the task's difficulty buckets (``EvalResult.score``) and cost
the measured latency at ``target.n`` as a fraction of dense causal attention's (mean over the
stack's layers). Feasibility is Optuna's own: ``trial.set_constraint("density", density - budget)``,
``trial.set_constraint("proxy_density", proxy_density - budget)`` and
``trial.set_constraint("mixing", 0 or 1)``; a trial is feasible when every constraint is <= 0.

A sampled candidate that fails a constraint is rejected before any scoring: its constraints and
``rejected`` reason are recorded and the trial is PRUNED (no made-up objective values). Reference
trials (classic patterns, enqueued with the user attribute ``REFERENCE``) are always scored, so they
can be plotted beside the front; an infeasible one is COMPLETE with its constraints > 0.

The record is one user attribute (``RECORD``), a JSON object whose keys are ``TrialRecord``'s
fields; ``read`` turns a trial back into a record. Studies from before the record kept each field
as its own user attribute under the same name: ``read`` reads those too, so their reports still work.

>>> from optuna.trial import create_trial
>>> rec = TrialRecord(status="ok", expression="causal & window(64)", accuracy=0.8, fidelity="full")
>>> trial = create_trial(values=[0.8, 0.3], user_attrs={RECORD: rec.to_attr()})
>>> read(trial) == rec
True
>>> read(create_trial(values=[0.9, 1.0], user_attrs={"reference": "dense_causal"})).reference  # older form
'dense_causal'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

__all__ = ["DIRECTIONS", "RECORD", "REFERENCE", "TrialRecord", "comparable", "feasible", "fidelity", "read",
           "scored"]

DIRECTIONS = ("maximize", "minimize")  # accuracy, cost
RECORD = "record"  # the user attribute holding TrialRecord.to_attr()
REFERENCE = "reference"  # set when a reference trial is enqueued: the classic pattern it reproduces


@dataclass(frozen=True, slots=True)
class TrialRecord:
    """Everything one trial found. ``None``: not reached (a rejected candidate has no cost)."""

    status: str | None = None  # running (until it ends), ok, rejected, diverged, duplicate, over budget
    reference: str | None = None  # the classic pattern a reference trial reproduces
    scorer: str | None = None  # scratch, adapt or calibrate (search.scorer)
    stack: dict | None = None  # the target's stack (patternc.Stack.to_dict()): drops into conf/pattern/
    proxy_stack: dict | None = None  # the stack the proxy was scored under (search.space.build maps it)
    expression: str | None = None  # one line: the expression, or "layer l: expr; ..." when layers differ
    rejected: str | None = None  # why a candidate was rejected, in words
    density: float | None = None  # mean block density at target.n, as a fraction of dense causal's
    proxy_density: float | None = None  # share of the causal pairs allowed at proxy.n
    mixing_depth: int | None = None  # layers until every causal pair is reached at target.n
    mixing_certified: bool | None = None  # True: certainly mixes within target.layers
    kv: dict | None = None  # {"ratio", "bytes", "max_live_keys"}: the KV cache against a dense one
    layout_key: str | None = None  # hash of what the trial is scored on: equal keys score alike
    reused_from: int | str | None = None  # the trial (or "store": another study) whose scores it reused
    fidelity: str | None = None  # "full", or "screen" (stopped at a screening rung)
    screen_accuracy: float | None = None  # the score at the last screening rung it reached
    rungs: list | None = None  # [[step, score], ...]: each screening rung reached
    cost: dict | None = None  # {"ratio", "ratio_low", "ratio_high", "seconds", "backend", "n", ...}
    accuracy: float | None = None  # the first objective value: the mean over difficulty buckets
    pooled_accuracy: float | None = None  # over every answer, whatever its bucket
    buckets: dict | None = None  # {bucket name: score}
    chance: float | None = None  # the task's chance accuracy (None: nothing is guessed)
    durations: dict | None = None  # {"compile", "reach", "cost", "train"}: seconds of each stage
    worker: dict | None = None  # {"index", "host", "pid"}: who ran the trial

    def to_attr(self) -> dict[str, Any]:
        """The JSON object stored as the trial's ``RECORD`` attribute (fields left None omitted)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    def replace(self, **changes: Any) -> TrialRecord:
        return dataclasses.replace(self, **changes)


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialRecord))


def read(trial: FrozenTrial) -> TrialRecord:
    """The trial's record: its ``RECORD`` attribute over any per-field attributes (older studies,
    and the ``reference`` set when a reference trial is enqueued)."""
    attrs = trial.user_attrs
    merged = {key: value for key, value in attrs.items() if key in _FIELDS}
    stored = attrs.get(RECORD)
    if isinstance(stored, dict):
        merged.update({key: value for key, value in stored.items() if key in _FIELDS})
    return TrialRecord(**merged)


def scored(trial: FrozenTrial) -> bool:
    """COMPLETE with finite [accuracy, cost]: something that can be plotted and compared."""
    return (trial.state == TrialState.COMPLETE and trial.values is not None
            and all(math.isfinite(v) for v in trial.values))


def fidelity(trial: FrozenTrial) -> str | None:
    """At what budget a scored trial's accuracy was measured: ``"full"``, or ``"checkpoint"`` for a
    trial that screening stopped at a rung; None for a trial without a score. A scored trial that
    records no fidelity was scored in full (studies from before screening)."""
    if not scored(trial):
        return None
    return "checkpoint" if read(trial).fidelity == "screen" else "full"


def comparable(trial: FrozenTrial) -> bool:
    """The one rule for what the report may compare and recommend: a scored trial scored in full.
    A checkpoint score was measured on part of the budget (it can beat every full one, or trail
    them), so it stands beside none: never on the front, never the best, never dominating."""
    return fidelity(trial) == "full"


def feasible(trial: FrozenTrial) -> bool | None:
    """Optuna's feasibility (every constraint <= 0); a COMPLETE trial without constraints counts as
    feasible, as Optuna's samplers count it; None when a trial has not got that far."""
    if trial.constraints:
        return all(v <= 0 for v in trial.constraints.values())
    return True if trial.state == TrialState.COMPLETE else None
