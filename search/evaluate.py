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
import itertools
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

__all__ = ["EvalResult", "compiled_at", "describe", "evaluate", "resolve_pattern", "rung_steps"]

# numpy seed sequences [seed, stream]: disjoint data (adaptation draws its own training batches)
_TRAIN_STREAM, _EVAL_STREAM, _SCREEN_STREAM, ADAPT_STREAM = 0, 1, 2, 3


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
    screen_accuracy: float | None = None  # the last rung's score, with task.train.rungs and promote
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


def describe(stack: Stack) -> str:
    """One line for a stack: its expression, or each layer's when they differ, and its parameters.

    >>> describe(Stack(default="causal & window(ceil($w * n))", layers=2, params=(("w", 0.05),)))
    'causal & window(ceil($w * n)) with $w = 0.05'
    >>> describe(Stack.from_dict({"default": "causal & window(64)", "layers": 12,
    ...                           "overrides": [{"layers": "0:6", "expr": "causal"}]}))
    'layers 0-5: causal; layers 6-11: causal & window(64)'
    """
    by_layer = []
    for l in range(stack.layers):
        exprs = {stack.rule_at(l, h)[0] for h in range(stack.heads)}
        by_layer.append(next(iter(exprs)) if len(exprs) == 1 else " / ".join(sorted(exprs)))
    runs, first = [], 0  # (first layer, last layer, text) of each run of equal layers
    for text, group in itertools.groupby(by_layer):
        last = first + len(list(group)) - 1
        runs.append(f"layer {first}: {text}" if first == last else f"layers {first}-{last}: {text}")
        first = last + 1
    text = by_layer[0] if len(runs) == 1 else "; ".join(runs)
    if stack.params:
        text += " with " + ", ".join(f"${name} = {value:.4g}" if isinstance(value, float) else
                                      f"${name} = {value}" for name, value in stack.params)
    return text


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
             promote: Callable[[int, float], bool] | None = None) -> EvalResult:
    """Train the tiny model under ``pattern`` on ``task`` from ``seed``; held-out accuracy.

    ``pattern``: an expression (``"causal & window(16)"``), a stack YAML path, a ``Stack``, a
    ``PatternConfig`` or a ``CompiledPattern`` compiled at ``task.n``. ``params`` bind ``$names``.
    With ``promote`` and ``task.train.rungs``, the model is scored at each rung's step (the
    learning-rate schedule is the full budget's) on ``screen_sequences`` held-out sequences and
    training goes on only if ``promote(step, accuracy)`` says so; the result is then scored where
    training stopped.

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
    check_task(task, prefix="")
    problem = make_task(task)
    cp = compiled_at(pattern, task, params)
    return _run(cp, problem, task, seed, promote)


def compiled_at(pattern, task: TaskConfig, params: dict | None = None) -> CompiledPattern:
    """``pattern`` (what ``evaluate`` takes) compiled at ``task.n``."""
    spec = resolve_pattern(pattern, task.model)
    if isinstance(spec, CompiledPattern):
        if spec.n != task.n:
            raise ValueError(f"the pattern is compiled at n = {spec.n} but task.n = {task.n}")
        return spec
    return patternc.compile(spec, task.n, params=params)


def _run(cp: CompiledPattern, problem: Task, task: TaskConfig, seed: int,
         promote: Callable[[int, float], bool] | None = None, start_from: dict | None = None,
         stream: int = _TRAIN_STREAM, reference: TinyTransformer | None = None,
         keep: list | None = None) -> EvalResult:
    """Train the tiny model under ``cp`` for ``task.train.steps`` (from ``start_from``'s weights, a
    state dict, when given; else from ``seed``'s initialisation) on data stream ``stream``, then
    score it on held-out data: accuracy, or with ``reference`` (a model to compare with) and no
    steps, exp(-KL(reference || model)) at the answered positions. ``keep``: a list the trained
    model is appended to."""
    device = resolve_device(task.train.device, where="train.device")
    with _threads(task.train.threads) as threads, torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyTransformer(problem.vocab, cp, task.model)  # CPU init: same weights
        if start_from is not None:
            model.load_state_dict(start_from)
        model.to(device)
        start = time.perf_counter()
        screened: list[tuple[int, float]] = []

        def checkpoint(step: int) -> bool:  # at each rung: score, and ask whether to go on
            sub = dataclasses.replace(task, train=dataclasses.replace(
                task.train, eval_sequences=task.train.screen_sequences))
            rng = np.random.default_rng([seed, _SCREEN_STREAM])
            correct, total = _score(model, problem, sub, rng, device)
            model.train()
            screened.append((step, _mean_over_buckets(correct, total)))  # as EvalResult.score
            return promote(step, screened[-1][1])

        rungs = rung_steps(task.train) if promote is not None else ()
        curve, steps, failure = _train(model, problem, task, np.random.default_rng([seed, stream]),
                                       device, rungs, checkpoint)
        trained = time.perf_counter()
        rng = np.random.default_rng([seed, _EVAL_STREAM])
        if failure is not None:
            correct = total = np.zeros(len(problem.bucket_names), np.int64)
        elif reference is not None and task.train.steps == 0:
            correct, total = _divergence(reference.to(device), model, problem, task, rng, device)
        else:
            correct, total = _score(model, problem, task, rng, device)
        scored = time.perf_counter()
        if keep is not None:
            keep.append(model.cpu())
    names = problem.bucket_names
    zero_shot = reference is not None and task.train.steps == 0
    # zero-shot: `correct` holds summed KL, and a bucket's score is exp(-mean KL) (as calibration's)
    mean = (lambda c, t: math.exp(-c / t)) if zero_shot else (lambda c, t: c / t)
    return EvalResult(
        status="ok" if failure is None else "diverged",
        accuracy=float(mean(correct.sum(), total.sum())) if failure is None else None,
        buckets={name: (float(mean(c, t)) if t else None)
                 for name, c, t in zip(names, correct, total, strict=True)},
        bucket_counts={name: round(float(t)) for name, t in zip(names, total, strict=True)},
        chance=None if zero_shot else problem.chance, loss_curve=curve, steps=steps,
        train_seconds=trained - start, eval_seconds=scored - trained,
        task=problem.name, n=task.n, layers=cp.layers, heads=cp.heads,
        parameters=sum(p.numel() for p in model.parameters()), seed=seed, threads=threads,
        pattern=_describe(cp), failure=failure, screen_accuracy=screened[-1][1] if screened else None,
        extra={"rungs": [[step, score] for step, score in screened]} if screened else {})


def rung_steps(train: TrainConfig) -> tuple[int, ...]:
    """The steps after which a screened trial is scored: each of ``rungs`` (fractions of ``steps``)
    rounded to a step, at least one step in and one before the end, without repeats.

    >>> rung_steps(TrainConfig(steps=400, rungs=[0.125, 0.375])), rung_steps(TrainConfig(steps=400))
    ((50, 150), ())
    """
    if train.steps < 2:
        return ()
    return tuple(sorted({min(max(1, round(r * train.steps)), train.steps - 1) for r in train.rungs}))


def _train(model: TinyTransformer, problem: Task, task: TaskConfig, rng: np.random.Generator,
           device: torch.device, rungs: tuple[int, ...] = (),
           checkpoint: Callable[[int], bool] | None = None):
    """Train in place for ``task.train.steps``; returns (loss curve, steps done, failure or None).
    After each step of ``rungs``, ``checkpoint(step)`` decides whether training goes on."""
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
        if step + 1 in rungs and not checkpoint(step + 1):
            return curve, step + 1, None
    return curve, t.steps, None


@torch.no_grad()
def _divergence(reference: TinyTransformer, model: TinyTransformer, problem: Task, task: TaskConfig,
                rng: np.random.Generator, device: torch.device):
    """Summed KL(reference || model) of the answer distributions, and answers, per bucket, on
    held-out sequences: how far ``model`` (the reference's weights under another pattern) has moved
    from what the reference answers."""
    model.eval()
    reference.eval()
    k = len(problem.bucket_names)
    kl, total = np.zeros(k), np.zeros(k, np.int64)
    remaining = task.train.eval_sequences
    while remaining:
        size = min(remaining, task.train.batch * 4)
        batch = problem.batch(rng, size)
        rows, labels = _asked(batch.labels)
        tokens = torch.from_numpy(batch.tokens).to(device)
        theirs = torch.log_softmax(reference(tokens, _on(rows, device)).float(), -1)  # (B, n or r, V)
        ours = torch.log_softmax(model(tokens, _on(rows, device)).float(), -1)
        gap = F.kl_div(ours, theirs, log_target=True, reduction="none").sum(-1).clamp(min=0.0)  # (B, n or r)
        answer = labels != IGNORE
        bucket = (batch.buckets if rows is None else batch.buckets[:, rows])[answer]
        kl += np.bincount(bucket, weights=gap.cpu().numpy()[answer], minlength=k)
        total += np.bincount(bucket, minlength=k)
        remaining -= size
    return kl, total


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
