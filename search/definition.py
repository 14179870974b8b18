"""What defines a study, what it is called, and how two definitions differ.

A study's trials are comparable only when they were scored the same way: the same space (template,
parameters, lengths, budget, references), the same proxy task, model and training, the same way of
measuring cost, the same training seed. That is the *definition*; it is stored in the study (user
attribute ``definition``) by the worker that creates it, and every later run or worker that opens
the study must bring the same one, or it is refused with the keys that differ.

Not in the definition, because they do not change what a trial scores: the budget
(``search.n_trials`` may grow on a rerun), the sampler and its seed, the storage, heartbeats,
timeouts, workers, ``kernel.repeats``/``warmup`` (precision of a measurement, not its meaning),
``task.train.threads``/``device`` (where training runs), ``task.n`` (trials train at
``space.proxy.n``), ``task.past_context`` (task=calibrate's permission to pass the model's context:
the length itself is in the definition) and the space's ``description``.

The default study name says what the study is and ends in a hash of the whole definition, so each
job of a sweep (``-m space=fixed_window,window_global seed=0,1``, ``task.train.steps=200,400``) gets
its own study and a rerun of the same command resumes it:

>>> from search.config import MQARConfig, TrainConfig
>>> space = SpaceConfig(name="fixed_window")
>>> name = study_name(definition(MQARConfig(), space, KernelConfig(), seed=0))
>>> name  # doctest: +ELLIPSIS
'fixed_window-mqar-n8192-seed0-...'
>>> study_name(definition(MQARConfig(train=TrainConfig(threads=1)), space, KernelConfig(), seed=0)) == name
True
>>> study_name(definition(MQARConfig(train=TrainConfig(steps=200)), space, KernelConfig(), seed=0)) == name
False
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from search.config import KernelConfig, SpaceConfig, TaskConfig

__all__ = ["DEFINITION", "definition", "differences", "study_name"]

DEFINITION = "definition"  # the study user attribute that holds it

_NOT_DEFINING = {
    "space": ("description",),
    # the last five: task=calibrate's (how it runs; past_context permits a length, it does not change one)
    "task": ("n", "threads", "device", "batch", "backend", "past_context"),
    "task.train": ("threads", "device"),
    "kernel": ("repeats", "warmup"),
}


def _plain(value: Any) -> Any:
    """JSON-safe and canonical: tuples as lists, dict keys as strings."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def definition(task: TaskConfig, space: SpaceConfig, kernel: KernelConfig, seed: int) -> dict:
    """The values that change what a trial of this run scores, as a JSON-safe dict."""
    out = {"space": dataclasses.asdict(space), "task": dataclasses.asdict(task),
           "kernel": dataclasses.asdict(kernel), "seed": seed}
    for path, keys in _NOT_DEFINING.items():
        node = out
        for part in path.split("."):
            node = node.get(part, {})  # task=calibrate has no task.train
        for key in keys:
            node.pop(key, None)
    train = out["task"].get("train")
    if train is not None:
        _as_before(train)
    return _plain(out)


def _as_before(train: dict) -> None:
    """Write ``task.train`` as studies from before adaptation and rungs recorded it, where it means
    what it meant then, so their studies keep their names and resume: a candidate trained from
    scratch (``init`` and ``adapt_steps`` then say nothing) and at most one rung, the old
    ``screen`` (0: none)."""
    if train.get("init") == "scratch":
        train.pop("init")
        train.pop("adapt_steps", None)
    rungs = train.get("rungs")
    if rungs is not None and len(rungs) <= 1:
        train.pop("rungs")
        train["screen"] = rungs[0] if rungs else 0.0


def study_name(defined: dict) -> str:
    """``<space>-<task>-n<target.n>-seed<seed>-<8 hex of the definition's hash>``."""
    digest = hashlib.sha256(json.dumps(defined, sort_keys=True).encode()).hexdigest()[:8]
    space, task = defined["space"], defined["task"]
    return f"{space['name']}-{task['name']}-n{space['target']['n']}-seed{defined['seed']}-{digest}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit - 3] + "..."


def differences(stored: dict, ours: dict, limit: int = 6,
                labels: tuple[str, str] = ("in the study", "here")) -> list[str]:
    """``"space.name: fixed_window in the study, window_global here"``, one per differing key, at most
    ``limit`` of them (then how many more); ``labels`` say where each side comes from.

    >>> differences({"seed": 0, "space": {"name": "a"}}, {"seed": 1, "space": {"name": "a"}})
    ['seed: 0 in the study, 1 here']
    """
    a, b = _flatten(stored), _flatten(ours)
    keys = sorted(set(a) | set(b), key=lambda key: (key.count("."), key))  # space.name before its params
    missing = object()
    lines = [f"{key}: {_short(a[key]) if key in a else '(absent)'} {labels[0]}, "
             f"{_short(b[key]) if key in b else '(absent)'} {labels[1]}"
             for key in keys if a.get(key, missing) != b.get(key, missing)]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])
