"""One validation layer for config values: every value a search or an evaluation uses is checked
before the first trial, and a bad one is a ``ConfigError`` that names its key.

Why before: a value that only fails inside a trial (``kernel.backend=cuda_magic``,
``task.train.steps=0``) used to fail trial 0, which was the dense reference, and left it FAIL in
the study. Rules are data: ``(key, test, what the key needs)``; a key is a dotted path into the
run's config, as a user types it on the command line.

>>> from search.config import MQARConfig, TrainConfig
>>> check_task(MQARConfig(train=TrainConfig(steps=0)))
Traceback (most recent call last):
  ...
search.errors.ConfigError: task.train.steps must be an integer >= 1, got 0
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from patternc import resolve_device
from search.config import DTYPES, SAMPLERS, KernelConfig, SearchConfig, SpaceConfig, TaskConfig
from search.errors import ConfigError
from search.space import check_space
from search.tasks import make_task

__all__ = ["INITS", "backend_choice", "check_kernel", "check_run", "check_seed", "check_settings",
           "check_task", "is_sqlite"]


def _int(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _real(test: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and test(v)


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


AT_LEAST_1 = (_int(1), "an integer >= 1")
INITS = ("scratch", "dense")  # task.train.init: search.scorer
ATTENTION = ("auto", "kernel", "sdpa", "flex")  # patternc.nn's backends (search.model.attention_backend)
MAX_WORKERS = 64  # search.workers: see its rule
SEED = (_int(0, 2**32 - 1), "an integer in [0, 2**32) (numpy and Optuna seed their generators with it)")

MODEL_RULES = [
    # a 1-wide residual stream is a constant after LayerNorm: the model could read nothing
    ("model.d_model", _int(2), "an integer >= 2 (a width of 0 or 1 trains nothing)"),
    ("model.layers", *AT_LEAST_1),
    ("model.heads", *AT_LEAST_1),
    ("model.head_dim", lambda v: _int(2)(v) and v % 2 == 0,
     "an even integer >= 2 (rotary embeddings pair dimensions)"),
    ("model.mlp_ratio", *AT_LEAST_1),
    ("model.attention", lambda v: v in ATTENTION, "one of " + ", ".join(ATTENTION)),
]
TRAIN_RULES = [
    ("train.steps", *AT_LEAST_1),
    ("train.batch", *AT_LEAST_1),
    ("train.eval_sequences", *AT_LEAST_1),
    ("train.log_every", *AT_LEAST_1),
    ("train.lr", _real(lambda v: 0 < v <= 1), "a number in (0, 1] (AdamW diverges at once above)"),
    ("train.warmup", _int(0), "an integer >= 0"),
    ("train.weight_decay", _real(lambda v: 0 <= v <= 1), "a number in [0, 1]"),
    ("train.clip", _real(lambda v: v > 0), "a positive finite number (the gradient-norm clip)"),
    ("train.threads", _optional(_int(1)), "null (keep the process's setting) or an integer >= 1"),
    ("train.rungs", lambda v: isinstance(v, list) and all(_real(lambda r: 0 < r < 1)(r) for r in v)
     and all(a < b for a, b in itertools.pairwise(v)),
     "a list of increasing fractions in (0, 1): the steps, as fractions of a candidate's, at which "
     "it is scored before going on ([]: every candidate in full)"),
    ("train.promote_within", _real(lambda v: 0 <= v <= 1),
     "a number in [0, 1] (below 0 a rung promotes nothing: a candidate as good as the front is "
     "stopped)"),
    ("train.init", lambda v: v in INITS,
     "one of " + ", ".join(INITS) + " (where a search's candidate starts)"),
    ("train.adapt_steps", _int(0), "an integer >= 0 (0: the dense proxy scored zero-shot)"),
    ("train.screen_sequences", *AT_LEAST_1),
]
KERNEL_RULES = [
    ("phase", lambda v: v in ("prefill", "decode"), "one of prefill, decode"),
    # a decode step at position 0 reads no cached key: there is nothing to time against dense decode
    ("context", _optional(_int(1)), "null (the last position, target.n - 1) or an integer >= 1 (the "
     "decode step's position: it reads the keys cached before it)"),
    ("dtype", lambda v: v in DTYPES, "one of " + ", ".join(DTYPES)),
    ("batch", *AT_LEAST_1),
    ("repeats", *AT_LEAST_1),
    ("warmup", _int(0), "an integer >= 0"),
]
SEARCH_RULES = [
    ("n_trials", *AT_LEAST_1),
    ("sampler", lambda v: v in SAMPLERS, "one of " + ", ".join(SAMPLERS)),
    ("seed", *SEED),
    ("heartbeat", *AT_LEAST_1),
    ("retries", _int(0), "an integer >= 0"),
    ("timeout", _optional(_real(lambda v: v > 0)), "null (no limit) or a positive number of seconds"),
    ("max_rejected", *AT_LEAST_1),
    ("workers", _int(1, MAX_WORKERS), f"an integer in [1, {MAX_WORKERS}] (each worker is a job whose config "
     f"is composed and checked before any starts, and holds its own connections to the study's database, "
     f"which PostgreSQL serves 100 of by default)"),
    ("worker", _int(0), "an integer >= 0"),
    ("storage_retry", _real(lambda v: v >= 0), "a number of seconds >= 0"),
    ("artifacts", _optional(lambda v: isinstance(v, str) and v != ""),
     "null (outputs/search/artifacts) or a directory path"),
    ("design", lambda v: isinstance(v, bool), "true or false"),
]


def _apply(rules, obj: Any, prefix: str) -> None:
    for key, test, needs in rules:
        value = obj
        for part in key.split("."):
            value = getattr(value, part)
        if not test(value):
            raise ConfigError(f"{prefix}{key} must be {needs}, got {value!r}")


def check_seed(seed: Any, key: str = "seed") -> None:
    """``seed`` (the model's initialisation and data) can seed numpy's generators."""
    if not SEED[0](seed):
        raise ConfigError(f"{key} must be {SEED[1]}, got {seed!r}")


def check_task(task: TaskConfig, prefix: str = "task.", devices: bool = True) -> None:
    """The model, the training and the task's own values of a task that trains (mqar, majority,
    hops); a task whose answers cannot be placed (a too crowded ``task.pairs``) is found by drawing
    two sequences, here rather than in trial 0. ``devices=False`` leaves ``train.device`` to the
    machine that trains (a cluster's GPU node). ``search.scorer.check_task`` takes any task."""
    _apply(MODEL_RULES + TRAIN_RULES, task, prefix)
    if devices:
        resolve_device(task.train.device, where=f"{prefix}train.device")
    make_task(task).batch(np.random.default_rng(0), 2)


def backend_choice(name: object, where: str) -> str:
    """A backend of ``patternc.kernels.BACKENDS``; an old name is translated, saying so."""
    from patternc.kernels import BACKENDS, RENAMED

    if isinstance(name, str) and name in RENAMED:
        warnings.warn(f"{where}={name} is now called {where}={RENAMED[name]}; the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        return RENAMED[name]
    if name not in BACKENDS:
        raise ConfigError(f"{where} must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def check_kernel(kernel: KernelConfig, devices: bool = True) -> None:
    """How cost will be measured: backend, dtype, sizes, repeats, and (``devices``) the device."""
    kernel.backend = backend_choice(kernel.backend, "kernel.backend")
    _apply(KERNEL_RULES, kernel, "kernel.")
    if kernel.phase == "decode" and kernel.backend != "kernel":
        raise ConfigError(f"kernel.phase=decode times our decode kernel: kernel.backend must be kernel, "
                          f"got {kernel.backend!r}")
    if kernel.phase == "prefill" and kernel.context is not None:
        raise ConfigError(f"kernel.context = {kernel.context} is the decode step's position: set "
                          f"kernel.phase=decode, or leave kernel.context null")
    if devices:
        resolve_device(kernel.device, where="kernel.device")


def is_sqlite(settings: SearchConfig) -> bool:
    """Does the study live in an embedded sqlite file (the default) rather than on a server?"""
    return settings.storage is None or settings.storage.startswith("sqlite")


def check_settings(settings: SearchConfig, space: SpaceConfig) -> None:
    """The study's settings, and how they fit the space (the budget holds its references)."""
    _apply(SEARCH_RULES, settings, "search.")
    if settings.worker >= settings.workers:
        raise ConfigError(f"search.worker is this worker's index among search.workers = {settings.workers}, "
                          f"so it must be below it, got {settings.worker}")
    if settings.workers > 1 and is_sqlite(settings):
        raise ConfigError(f"search.workers = {settings.workers} share one study, which an embedded sqlite "
                          f"file cannot hold safely across processes or machines: give a server URL, "
                          f"search.storage=postgresql+psycopg2://user:password@host/db")
    if settings.references and settings.n_trials < len(space.references):
        raise ConfigError(f"search.n_trials = {settings.n_trials} is fewer than the {len(space.references)} "
                          f"reference trials of space {space.name} ({', '.join(space.references)}), which "
                          f"always run: raise it, or set search.references=false")


def check_run(space: SpaceConfig, kernel: KernelConfig, settings: SearchConfig, seed: int,
              devices: bool = True) -> None:
    """What a search uses besides its task (``search.scorer.check_search`` adds the task's scorer).

    >>> space = SpaceConfig(name="window", references={"dense": {"expr": "causal"},
    ...                                                "local": {"expr": "causal & window(16)"}})
    >>> check_run(space, KernelConfig(), SearchConfig(), seed=0)  # all good: nothing
    >>> check_run(space, KernelConfig(), SearchConfig(n_trials=1), seed=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    search.errors.ConfigError: search.n_trials = 1 is fewer than the 2 reference trials of space window ...
    """
    check_seed(seed)
    check_space(space)
    check_settings(settings, space)
    check_kernel(kernel, devices)
    if kernel.context is not None and not kernel.context < space.target.n:
        raise ConfigError(f"kernel.context = {kernel.context} must be below space.target.n = "
                          f"{space.target.n}: the decode step's query is at position kernel.context")
