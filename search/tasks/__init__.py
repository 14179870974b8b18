"""Proxy tasks: seeded generators of token sequences with answers in buckets.

- ``mqar``: multi-query associative recall at controlled query-to-key distances;
- ``majority``: which marker of a group occurred most often, asked at the end (aggregation);
- ``hops``: pointer chasing through 1, 2, 3 ... assignments (depth and reach).

A new task is a ``Task`` subclass here, its config dataclass in ``search.config.TASK_SCHEMAS`` and
a YAML under ``conf/task/``; ``make_task`` finds it by the config's ``name``.

>>> import numpy as np
>>> from search.config import MajorityConfig, MQARConfig
>>> make_task(MQARConfig(n=128)).batch(np.random.default_rng(0), 8).tokens.shape
(8, 128)
>>> make_task(MajorityConfig(n=4))
Traceback (most recent call last):
  ...
ValueError: task.n must be at least 8, got 4
"""

from __future__ import annotations

from search.config import TASK_SCHEMAS, TaskConfig
from search.errors import ConfigError
from search.tasks.base import IGNORE, Batch, Task, bucket_of
from search.tasks.hops import Hops
from search.tasks.majority import Majority
from search.tasks.mqar import MQAR

__all__ = ["IGNORE", "MQAR", "TASKS", "Batch", "Hops", "Majority", "Task", "bucket_of", "make_task"]

# their schemas: config.TASK_SCHEMAS
TASKS: dict[str, type[Task]] = {"mqar": MQAR, "majority": Majority, "hops": Hops}


def make_task(cfg: TaskConfig) -> Task:
    """The task a config describes, its values checked (bad ones raise ``ValueError`` naming the key)."""
    if cfg.name not in TASKS:
        raise ConfigError(f"unknown task {cfg.name!r}; choose from {', '.join(TASKS)}")
    schema = TASK_SCHEMAS[cfg.name]
    if not isinstance(cfg, schema):
        raise ConfigError(f"task {cfg.name!r} takes a {schema.__name__}, got {type(cfg).__name__}")
    if cfg.n < 8:
        raise ConfigError(f"task.n must be at least 8, got {cfg.n}")
    return TASKS[cfg.name](cfg)
