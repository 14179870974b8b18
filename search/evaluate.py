"""Train the tiny model under a pattern on a proxy task and report held-out accuracy.

``evaluate(pattern, task, seed)`` compiles the pattern at the task's length, builds the tiny model
with one exact mask per layer and head, trains it on batches drawn from ``seed`` and scores it on
``task.train.eval_sequences`` sequences drawn from another stream of the same seed, never seen in
training. Same pattern, config, seed and thread count give the same numbers on the CPU; with
``train.device=cuda`` the model trains on the GPU (the same initial weights and batches; GPU kernels
may sum in another order, so reruns agree closely rather than bit for bit).

A NaN or infinite loss ends training at once: the result says ``status: diverged``, at which step,
and has no accuracy; nothing is raised, so a search can record the trial and move on.

>>> from search.config import MQARConfig, TrainConfig
>>> task = MQARConfig(n=32, pairs=3, distances=[2, 8, 32], model=ModelConfig(d_model=16, head_dim=4),
...                   train=TrainConfig(steps=4, batch=4, eval_sequences=16, threads=1))  # a smoke-test size
>>> r = evaluate("causal & window(16)", task, seed=0)
>>> r.status, r.steps, r.bucket_counts, r.chance  # chance: 1 / task.values
('ok', 4, {'2-7': 19, '8-31': 29}, 0.03125)
>>> again = evaluate("causal & window(16)", task, seed=0)
>>> (again.accuracy, again.loss_curve) == (r.accuracy, r.loss_curve)  # same seed and threads: same numbers
True

At the default size (``MQARConfig()``: n = 128, 400 steps) an evaluation takes about half a minute
on 2 cores; docs/results.md lists what classic patterns score there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import patternc
from patternc import CompiledPattern, Stack, resolve_device
from search.config import ModelConfig, PatternConfig, TaskConfig, TrainConfig
from search.model import TinyTransformer
from search.tasks import IGNORE, Task, make_task
from search.validate import check_task

__all__ = ["EvalResult", "evaluate", "resolve_pattern", "screen_step"]

_TRAIN_STREAM, _EVAL_STREAM, _SCREEN_STREAM = 0, 1, 2  # numpy seed sequences [seed, stream]: disjoint data


@dataclass
class EvalResult:
    """What one evaluation found; ``to_dict`` is its JSON form."""

    status: str  # "ok" or "diverged"
    accuracy: float | None  # held-out accuracy over every answer; None when diverged
    buckets: dict[str, float | None]  # accuracy per bucket (None: no answer fell in it)
    bucket_counts: dict[str, int]
    chance: float  # accuracy of guessing without reading the sequence
    loss_curve: list[tuple[int, float]]  # (step, mean training loss over the last log_every steps)
    steps: int  # training steps done
    train_seconds: float
    eval_seconds: float
    task: str
    n: int
    layers: int
    heads: int
    parameters: int
    seed: int
    threads: int
    pattern: str  # the expression, or the stack's description
    failure: str | None = None  # why a diverged run stopped
    screen_accuracy: float | None = None  # the checkpoint's score, with task.train.screen and promote
    extra: dict = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        """The task's aggregate: mean accuracy over its difficulty buckets (those with answers), the
        area under the accuracy-difficulty curve in unit steps. Each bucket weighs the same however
        many answers fell in it, so the hard end counts as much as the easy one; for tasks that draw
        buckets evenly (mqar, hops) it is the pooled accuracy up to sampling. What a search maximises.
        None when diverged."""
        if self.status != "ok":
            return None
        scores = [a for a in self.buckets.values() if a is not None]
        return float(np.mean(scores)) if scores else self.accuracy

    @property
    def wall_seconds(self) -> float:
        return self.train_seconds + self.eval_seconds

    def to_dict(self) -> dict:
        out = asdict(self)
        out["wall_seconds"] = round(self.wall_seconds, 3)
        out["score"] = self.score
        out["loss_curve"] = [[step, loss] for step, loss in self.loss_curve]
        return out


def resolve_pattern(pattern: str | os.PathLike | Stack | PatternConfig | CompiledPattern,
                    model: ModelConfig) -> Stack | CompiledPattern:
    """A stack (or an already compiled pattern) from what a user or a config gave.

    A bare expression gets the model's ``layers`` and ``heads``; a stack or a YAML file keeps its
    own. ``PatternConfig`` is the ``pattern`` node of ``patternc-search``: either ``expr`` (with
    optional ``layers``, ``heads``, ``block``, ``params``) or the keys of a stack file, not both.
    """
    if isinstance(pattern, (Stack, CompiledPattern)):
        return pattern
    if isinstance(pattern, PatternConfig):
        return _from_config(pattern, model)
    text = os.fspath(pattern)
    if text.endswith((".yaml", ".yml")) or os.path.isfile(text):
        return patternc.load_stack(text)
    return Stack(default=text, layers=model.layers, heads=model.heads)


def _from_config(cfg: PatternConfig, model: ModelConfig) -> Stack:
    stack_keys = {"default": cfg.default, "overrides": cfg.overrides or None, "causal": cfg.causal,
                  "description": cfg.description}
    if cfg.expr is not None:
        clash = [key for key, value in stack_keys.items() if value is not None]
        if clash:
            raise patternc.StackError(
                f"the pattern has both expr and the stack keys {', '.join(clash)}: give either "
                f"pattern=<file in conf/pattern> or pattern.expr='...', not both", where="pattern")
        data = {"default": cfg.expr, "layers": cfg.layers or model.layers, "heads": cfg.heads or model.heads}
        if cfg.block is not None:
            data["block"] = cfg.block
        if cfg.params:
            data["params"] = dict(cfg.params)
        return Stack.from_dict(data, source="pattern.expr")
    if cfg.default is None:
        raise patternc.StackError("no pattern given: choose pattern=<name> (a file in conf/pattern/) or "
                                  "pattern.expr='causal & window(16)'", where="pattern")
    data = {key: value for key, value in {
        "default": cfg.default, "layers": cfg.layers, "heads": cfg.heads, "block": cfg.block,
        "causal": cfg.causal, "overrides": list(cfg.overrides), "params": dict(cfg.params),
        "description": cfg.description}.items() if value is not None}
    return Stack.from_dict(data, source="pattern")


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _learning_rate(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def evaluate(pattern, task: TaskConfig, seed: int = 0, params: dict | None = None,
             promote: Callable[[float], bool] | None = None) -> EvalResult:
    """Train the tiny model under ``pattern`` on ``task`` from ``seed``; held-out accuracy.

    ``pattern``: an expression (``"causal & window(16)"``), a stack YAML path, a ``Stack``, a
    ``PatternConfig`` or a ``CompiledPattern`` compiled at ``task.n``. ``params`` bind ``$names``.
    With ``promote`` and ``task.train.screen``, a checkpoint at ``screen_step`` (the learning-rate schedule
    is the full budget's) is scored on ``screen_sequences`` held-out sequences and training goes on
    only if ``promote(accuracy)`` says so; the result is then scored where training stopped.

    >>> from search.config import MQARConfig, TrainConfig
    >>> task = MQARConfig(n=32, pairs=3, distances=[2, 8, 32], model=ModelConfig(d_model=16, head_dim=4),
    ...                   train=TrainConfig(steps=4, batch=4, eval_sequences=16, threads=1))  # tiny
    >>> r = evaluate("causal & window($w)", task, seed=1, params={"w": 8})
    >>> r.status, r.pattern, r.layers, r.heads  # a bare expression gets the model's layers and heads
    ('ok', 'causal & window($w)', 2, 4)
    >>> evaluate(patternc.compile("causal", n=64), task)
    Traceback (most recent call last):
      ...
    ValueError: the pattern is compiled at n = 64 but task.n = 32
    """
    from search.calibrate import calibrate, calibration_task

    if calibration_task(task):  # task=calibrate: a pretrained model, scored without training
        return calibrate(pattern, task, seed=seed, params=params)
    check_task(task, prefix="")
    problem = make_task(task)
    spec = resolve_pattern(pattern, task.model)
    if isinstance(spec, CompiledPattern):
        if spec.n != task.n:
            raise ValueError(f"the pattern is compiled at n = {spec.n} but task.n = {task.n}")
        cp = spec
    else:
        cp = patternc.compile(spec, task.n, params=params)
    device = resolve_device(task.train.device, where="train.device")
    with _threads(task.train.threads) as threads, torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyTransformer(problem.vocab, cp, task.model).to(device)  # CPU init: same weights
        start = time.perf_counter()
        screened: list[float] = []

        def checkpoint() -> bool:  # at screen_step(task.train): score, and ask whether to go on
            sub = dataclasses.replace(task, train=dataclasses.replace(
                task.train, eval_sequences=task.train.screen_sequences))
            rng = np.random.default_rng([seed, _SCREEN_STREAM])
            correct, total = _score(model, problem, sub, rng, device)
            model.train()
            screened.append(_mean_over_buckets(correct, total))  # as EvalResult.score
            return promote(screened[-1])

        screen = screen_step(task.train) if promote is not None else None
        curve, steps, failure = _train(model, problem, task, np.random.default_rng([seed, _TRAIN_STREAM]),
                                       device, screen, checkpoint)
        trained = time.perf_counter()
        if failure is None:
            correct, total = _score(model, problem, task, np.random.default_rng([seed, _EVAL_STREAM]),
                                    device)
        else:
            correct = total = np.zeros(len(problem.bucket_names), np.int64)
        scored = time.perf_counter()
    names = problem.bucket_names
    return EvalResult(
        status="ok" if failure is None else "diverged",
        accuracy=float(correct.sum() / total.sum()) if failure is None else None,
        buckets={name: (float(c / t) if t else None)
                 for name, c, t in zip(names, correct, total, strict=True)},
        bucket_counts={name: int(t) for name, t in zip(names, total, strict=True)},
        chance=problem.chance, loss_curve=curve, steps=steps,
        train_seconds=trained - start, eval_seconds=scored - trained,
        task=problem.name, n=task.n, layers=cp.layers, heads=cp.heads,
        parameters=sum(p.numel() for p in model.parameters()), seed=seed, threads=threads,
        pattern=_describe(cp), failure=failure, screen_accuracy=screened[0] if screened else None)


def screen_step(train: TrainConfig) -> int | None:
    """The step after which a screened trial is scored: ``screen`` of ``steps``, at least one step
    in and one before the end; None without screening (``screen`` 0, or a budget too short).

    >>> screen_step(TrainConfig(steps=400, screen=0.375)), screen_step(TrainConfig(steps=400))
    (150, None)
    """
    if train.screen <= 0 or train.steps < 2:
        return None
    return min(max(1, round(train.screen * train.steps)), train.steps - 1)


def _train(model: TinyTransformer, problem: Task, task: TaskConfig, rng: np.random.Generator,
           device: torch.device, screen: int | None = None, checkpoint: Callable[[], bool] | None = None):
    """Train in place; returns (loss curve, steps done, failure or None). After ``screen`` steps,
    ``checkpoint()`` decides whether training goes on."""
    t = task.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    model.train()
    for step in range(t.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, t.steps, t.lr, t.warmup)
        batch = problem.batch(rng, t.batch)
        rows, labels = _asked(batch.labels)
        logits = model(torch.from_numpy(batch.tokens).to(device), _on(rows, device))  # (B, n or r, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(labels).to(device).flatten(),
                               ignore_index=IGNORE)
        value = loss.item()
        if not math.isfinite(value):
            return curve, step, f"training loss became {value} at step {step} (train.lr = {t.lr})"
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip)
        optimizer.step()
        window.append(value)
        if len(window) == t.log_every or step == t.steps - 1:
            curve.append((step + 1, round(float(np.mean(window)), 5)))
            window.clear()
        if step + 1 == screen and not checkpoint():
            return curve, screen, None
    return curve, t.steps, None


@torch.no_grad()
def _score(model: TinyTransformer, problem: Task, task: TaskConfig, rng: np.random.Generator,
           device: torch.device):
    """Correct answers and answers per bucket on held-out sequences."""
    model.eval()
    k = len(problem.bucket_names)
    correct, total = np.zeros(k, np.int64), np.zeros(k, np.int64)
    remaining = task.train.eval_sequences
    while remaining:
        size = min(remaining, task.train.batch * 4)
        batch = problem.batch(rng, size)
        rows, labels = _asked(batch.labels)
        predicted = model(torch.from_numpy(batch.tokens).to(device), _on(rows, device)).argmax(-1)
        predicted = predicted.cpu().numpy()  # (B, n or r)
        answer = labels != IGNORE
        hit = predicted[answer] == labels[answer]
        bucket = (batch.buckets if rows is None else batch.buckets[:, rows])[answer]
        correct += np.bincount(bucket, weights=hit, minlength=k).astype(np.int64)
        total += np.bincount(bucket, minlength=k)
        remaining -= size
    return correct, total


def _asked(labels: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """The positions where some sequence of the batch has an answer, and the labels there, when they
    are at most a quarter of the sequence (the model then computes its last layer there alone:
    majority and hops ask at 4 of 256); else None and every label."""
    rows = np.flatnonzero((labels != IGNORE).any(0))
    if len(rows) > labels.shape[1] // 4:
        return None, labels
    return rows, labels[:, rows]


def _on(rows: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if rows is None else torch.from_numpy(rows).to(device)


def _mean_over_buckets(correct: np.ndarray, total: np.ndarray) -> float:
    answered = total > 0
    return float(np.mean(correct[answered] / total[answered]))


def _describe(cp: CompiledPattern) -> str:
    if cp.stack.description:
        return cp.stack.description
    expressions = {cp.expression(layer, head) for layer in range(cp.layers) for head in range(cp.heads)}
    return next(iter(expressions)) if len(expressions) == 1 else f"{len(expressions)} expressions"
