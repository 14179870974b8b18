"""How a search scores a candidate's accuracy: one ``Scorer``, chosen once from the task.

- ``Scratch`` (``task.train.init=scratch``): the tiny proxy model trained from its initialisation
  for ``task.train.steps`` under the candidate's proxy stack; held-out accuracy. It answers "can a
  model with this attention learn the task?" (an architecture question).
- ``Adapt`` (``task.train.init=dense``): the dense proxy is trained once per definition for
  ``task.train.steps`` and kept in the artifact store (``search.artifacts``); each candidate starts
  from its weights and trains ``task.train.adapt_steps`` (K) steps under its pattern, then is scored
  on held-out data. With K = 0, the dense proxy under the pattern is scored zero-shot: exp(-KL)
  against the dense proxy's answers, as calibration scores a pretrained model. It answers "how much
  of a trained dense model does this pattern keep?", the question of sparsifying a model.
- ``Calibrate`` (``task=calibrate``): a pretrained model under the pattern at the calibration
  length ``space.proxy.n``, against the dense model, without training (``search.calibrate``).

Each checks its own values at start-up (``check``), prepares once per process (``prepare``: the
dense reference) and scores a proxy layout (``score``). ``definition`` says what a score depends on:
scores are kept in the artifact store under it and a layout's hash, so a study with the same scorer
definition (another space, another budget) reuses them, the classic references above all.

>>> from search.config import MQARConfig, ModelConfig, ProxyConfig, SpaceConfig, TrainConfig
>>> task = MQARConfig(n=32, pairs=3, distances=[2, 8, 32], model=ModelConfig(d_model=16, head_dim=4),
...                   train=TrainConfig(steps=4, batch=4, eval_sequences=16, threads=1, init="dense",
...                                     adapt_steps=2))  # a smoke-test size
>>> space = SpaceConfig(name="w", proxy=ProxyConfig(n=32, block=8), references={"dense": {"expr": "causal"}})
>>> scorer = make_scorer(task, space, seed=0)
>>> type(scorer).__name__
'Adapt'
>>> scorer.prepare(open_store(SearchConfig(artifacts=str(tmp_path))))  # trains the dense proxy: 4 steps
>>> import patternc
>>> result = scorer.score(patternc.compile(patternc.Stack("causal & window(8)", layers=2, heads=4), 32))
>>> result.steps, scorer.fidelity(result)  # adapted 2 steps from the dense weights
(2, 'full')
>>> make_scorer(dataclasses.replace(task, train=dataclasses.replace(task.train, adapt_steps=9)), space, 0)
... # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
search.errors.ConfigError: task.train.adapt_steps = 9 must be in [0, task.train.steps = 4]: ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

import patternc
from patternc import CompiledPattern, Stack
from search.artifacts import Store, open_store
from search.calibrate import CalibrateConfig, calibrate, check_calibration, check_calibration_space
from search.config import KernelConfig, SearchConfig, SpaceConfig, TaskConfig
from search.errors import ConfigError
from search.evaluate import ADAPT_STREAM, EvalResult, _run, evaluate, rung_steps
from search.model import TinyTransformer
from search.tasks import make_task
from search.validate import check_run
from search.validate import check_task as check_training_task

__all__ = ["Adapt", "Calibrate", "Scorer", "Scratch", "check_search", "check_task", "make_scorer",
           "result_from_dict", "score_pattern"]

Promote = Callable[[int, float], bool]  # (rung step, score) -> go on?


class Scorer(ABC):
    """Scores a candidate's proxy layout (compiled at ``space.proxy.n``)."""

    name: ClassVar[str]

    def __init__(self, task: Any, space: SpaceConfig, seed: int):
        self.task = dataclasses.replace(task, n=space.proxy.n)  # every scorer scores at the proxy length
        self.space, self.seed = space, seed

    @abstractmethod
    def check(self, devices: bool = True) -> None:
        """Every value this scorer uses, before the first trial (a ``ConfigError`` naming its key)."""

    def prepare(self, store: Store | None) -> None:  # noqa: B027 (most scorers need nothing)
        """Once per process, before the first score: what every score starts from."""

    @abstractmethod
    def score(self, proxy: CompiledPattern, promote: Promote | None = None) -> EvalResult:
        """The candidate's quality; ``promote`` decides at each screening rung whether it goes on."""

    def fidelity(self, result: EvalResult) -> str:
        """``full``, or ``screen`` when a rung stopped it."""
        return "full"

    @property
    def rungs(self) -> tuple[int, ...]:
        """The steps at which a candidate is screened (none: scored in full)."""
        return ()

    def definition(self) -> dict:
        """What a full score depends on besides the proxy's layout: scores are reused under it."""
        task = dataclasses.asdict(self.task)
        for key in ("rungs", "promote_within", "screen_sequences", "log_every", "threads"):
            task.get("train", {}).pop(key, None)  # how a score is reached or logged, not what it is
        return {"scorer": self.name, "task": task, "seed": self.seed,
                "proxy": dataclasses.asdict(self.space.proxy)}

    def definition_hash(self) -> str:
        return _digest(self.definition())


class Scratch(Scorer):
    """The proxy trained from scratch under the pattern (``task.train.init=scratch``)."""

    name = "scratch"

    def check(self, devices: bool = True) -> None:
        check_training_task(self.task, devices=devices)

    @property
    def rungs(self) -> tuple[int, ...]:
        return rung_steps(self.task.train)

    def score(self, proxy: CompiledPattern, promote: Promote | None = None) -> EvalResult:
        return evaluate(proxy, self.task, seed=self.seed, promote=promote if self.rungs else None)

    def fidelity(self, result: EvalResult) -> str:
        return "full" if result.steps == self.task.train.steps else "screen"


class Adapt(Scorer):
    """The dense proxy, trained once, adapted K steps under the pattern (``task.train.init=dense``)."""

    name = "adapt"

    def __init__(self, task: Any, space: SpaceConfig, seed: int):
        super().__init__(task, space, seed)
        train = self.task.train
        k = train.adapt_steps
        # K steps on the full schedule's peak rate, warmed up over at most a quarter of them (the
        # weights are trained: a long warm-up would spend the adaptation budget at a crawl)
        self.adapt_task = dataclasses.replace(self.task, train=dataclasses.replace(
            train, steps=k, warmup=min(train.warmup, k // 4)))
        self.dense: TinyTransformer | None = None
        self.dense_result: EvalResult | None = None

    def check(self, devices: bool = True) -> None:
        check_training_task(self.task, devices=devices)
        train = self.task.train
        if not 0 <= train.adapt_steps <= train.steps:
            raise ConfigError(f"task.train.adapt_steps = {train.adapt_steps} must be in [0, task.train.steps "
                              f"= {train.steps}]: a candidate adapts at most as long as the dense "
                              f"reference trained")
        dense = [name for name, ref in self.space.references.items() if _is_dense(ref)]
        if not dense:
            raise ConfigError(f"task.train.init=dense adapts every candidate from the dense reference, but "
                              f"space {self.space.name} lists none in space.references "
                              f"({', '.join(self.space.references) or 'none'}): add "
                              f"dense_causal: {{expr: causal}}, or set task.train.init=scratch")

    @property
    def rungs(self) -> tuple[int, ...]:
        return rung_steps(self.adapt_task.train)

    def definition(self) -> dict:
        return {**super().definition(), "adapt_steps": self.task.train.adapt_steps}

    def dense_definition(self) -> dict:
        """What the dense reference's weights depend on (not K)."""
        out = Scorer.definition(self)
        out["task"]["train"].pop("adapt_steps", None)
        out["task"]["train"].pop("init", None)
        return {**out, "scorer": "dense"}

    def _dense_pattern(self) -> CompiledPattern:
        proxy = self.space.proxy
        return patternc.compile(Stack("causal", layers=proxy.layers, heads=proxy.heads), proxy.n,
                                block=proxy.block)

    def prepare(self, store: Store | None) -> None:
        """Load the dense proxy's weights from ``store``, or train it (``task.train.steps``) and keep
        them there: once per definition, for every worker and study."""
        if self.dense is not None:
            return
        digest = _digest(self.dense_definition())
        problem = make_task(self.task)
        cp = self._dense_pattern()
        weights = store.get(f"dense-{digest}.pt") if store is not None else None
        result = store.get(f"dense-{digest}.json") if store is not None else None
        if weights is None or result is None:
            kept: list[TinyTransformer] = []
            trained = _run(cp, problem, self.task, self.seed, keep=kept)
            if trained.status != "ok":
                raise ConfigError(f"task.train.init=dense: the dense reference diverged ({trained.failure}); "
                                  f"lower task.train.lr, or set task.train.init=scratch")
            buffer = io.BytesIO()
            torch.save(kept[0].state_dict(), buffer)
            weights, result = buffer.getvalue(), json.dumps(trained.to_dict()).encode()
            if store is not None:
                store.put(f"dense-{digest}.pt", weights)
                store.put(f"dense-{digest}.json", result)
        self.dense_result = result_from_dict(json.loads(result))
        with torch.random.fork_rng():
            model = TinyTransformer(problem.vocab, cp, self.task.model)
        model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
        self.dense = model.eval()

    def score(self, proxy: CompiledPattern, promote: Promote | None = None) -> EvalResult:
        if self.dense is None:
            self.prepare(None)
        return _run(proxy, make_task(self.adapt_task), self.adapt_task, self.seed,
                    promote if self.rungs else None, start_from=self.dense.state_dict(),
                    stream=ADAPT_STREAM, reference=self.dense)

    def fidelity(self, result: EvalResult) -> str:
        return "full" if result.steps == self.adapt_task.train.steps else "screen"


class Calibrate(Scorer):
    """A pretrained model under the pattern at the calibration length ``space.proxy.n``
    (``task=calibrate``)."""

    name = "calibrate"

    def check(self, devices: bool = True) -> None:
        # the space first: a calibration length past the context is space.proxy.n's fault in a search
        check_calibration_space(self.task, self.space)
        check_calibration(self.task, "task.", devices)

    def score(self, proxy: CompiledPattern, promote: Promote | None = None) -> EvalResult:
        return calibrate(proxy, self.task, seed=self.seed)

    def definition(self) -> dict:
        return {"scorer": self.name, "task": dataclasses.asdict(self.task), "seed": self.seed}


def _digest(definition: dict) -> str:
    """A short hash naming what ``definition`` defines (artifact store entries)."""
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_dense(ref: Any) -> bool:
    return isinstance(ref, dict) and str(ref.get("expr", "")).strip() == "causal"


def make_scorer(task: Any, space: SpaceConfig, seed: int = 0, devices: bool = True) -> Scorer:
    """The task's scorer, its values checked: ``Calibrate`` for ``task=calibrate``, else
    ``task.train.init``'s (``Scratch`` or ``Adapt``)."""
    if isinstance(task, CalibrateConfig):  # the one place the kind of task decides how it is scored
        scorer: Scorer = Calibrate(task, space, seed)
    else:
        check_training_task(task, devices=devices)  # task.train.init among them
        scorer = Adapt(task, space, seed) if task.train.init == "dense" else Scratch(task, space, seed)
    scorer.check(devices)
    return scorer


def check_task(task: Any, devices: bool = True) -> None:
    """Any task's values as ``mode=evaluate`` uses them (at its own ``n``)."""
    if isinstance(task, CalibrateConfig):
        check_calibration(task, "task.", devices)
    else:
        check_training_task(task, devices=devices)


def score_pattern(pattern: Any, task: Any, seed: int = 0) -> EvalResult:
    """``mode=evaluate``: one pattern scored on ``task`` at ``task.n``, trained from scratch, or
    calibrated on the pretrained model of ``task=calibrate``.

    >>> from search.config import MQARConfig, ModelConfig, TrainConfig
    >>> task = MQARConfig(n=32, pairs=3, distances=[2, 8, 32], model=ModelConfig(d_model=16, head_dim=4),
    ...                   train=TrainConfig(steps=4, batch=4, eval_sequences=16, threads=1))  # tiny
    >>> score_pattern("causal & window(8)", task).steps
    4
    """
    check_task(task)
    if isinstance(task, CalibrateConfig):
        return calibrate(pattern, task, seed=seed)
    return evaluate(pattern, task, seed=seed)


def check_search(task: TaskConfig, space: SpaceConfig, kernel: KernelConfig, settings: SearchConfig,
                 seed: int, devices: bool = True) -> Scorer:
    """Everything a search run uses, before its first trial, and the scorer it will use;
    ``devices=False`` (a launcher checking its jobs) leaves the devices to the machines the jobs
    run on. The artifact store is opened (checked writable) when the scorer needs one.

    >>> from search.config import MQARConfig
    >>> space = SpaceConfig(name="window", references={"dense": {"expr": "causal"},
    ...                                                "local": {"expr": "causal & window(16)"}})
    >>> type(check_search(MQARConfig(), space, KernelConfig(), SearchConfig(), seed=0)).__name__
    'Scratch'
    >>> check_search(MQARConfig(), space, KernelConfig(), SearchConfig(n_trials=1), seed=0)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    search.errors.ConfigError: search.n_trials = 1 is fewer than the 2 reference trials of space window ...
    """
    check_run(space, kernel, settings, seed, devices)
    scorer = make_scorer(task, space, seed, devices)
    if isinstance(scorer, Adapt):
        if settings.workers > 1 and settings.artifacts is None:
            raise ConfigError(f"search.artifacts: task.train.init=dense keeps the dense reference's weights "
                              f"where every one of search.workers = {settings.workers} finds them: give a "
                              f"directory they share")
        if devices:
            open_store(settings)
    return scorer


def result_from_dict(data: dict) -> EvalResult:
    """An ``EvalResult`` back from ``to_dict`` (as kept in the artifact store)."""
    names = {f.name for f in dataclasses.fields(EvalResult)}
    fields = {key: value for key, value in data.items() if key in names}
    fields["loss_curve"] = [tuple(point) for point in fields.get("loss_curve", [])]
    return EvalResult(**fields)
