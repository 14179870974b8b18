"""One trial of the search: candidate -> checks -> measured cost -> proxy accuracy.

1. the space suggests a stack (or a reference trial names a classic pattern);
2. it is compiled at ``n_target`` (the kernel's block) and at ``n_proxy`` (the model's);
3. constraints, in milliseconds: mean block density at ``n_target`` within the budget (as a
   fraction of dense causal's), the share of causal pairs allowed at ``n_proxy`` within it too (a
   pattern that rounds to dense at the proxy length would get dense accuracy there), and, when
   required, every causal pair reached within the model's
   depth at ``n_proxy`` (``patternc.reach``, exact). A failing candidate is recorded with its reason
   and pruned: it never reaches the kernel or the training;
4. cost: ``patternc.measure`` on every distinct layer at ``n_target`` (cached on disk), the mean
   latency as a fraction of dense causal SDPA's;
5. accuracy: ``search.evaluate`` on the proxy task at ``n_proxy``.

Everything found is a trial attribute (keys in ``search.record``).

>>> study.optimize(Objective(task, space, kernel, seed=0), n_trials=10)   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import time

import optuna
import torch

import patternc
from patternc.compiled import CompiledPattern
from patternc.cost import layout_hash
from patternc.errors import PatternError
from patternc.stack import Stack
from search import record
from search.config import KernelConfig, SpaceConfig, TaskConfig
from search.evaluate import evaluate
from search.space import reference_stack, suggest

__all__ = ["Diverged", "Objective", "density_vs_causal", "describe"]


class Diverged(RuntimeError):
    """Training under the candidate ended with a NaN or infinite loss (the trial is FAIL)."""


def describe(stack: Stack) -> str:
    """One line for a stack: its expression, or each layer's when they differ, and its parameters.

    >>> describe(Stack(default="causal & window(ceil($w * n))", layers=2, params=(("w", 0.05),)))
    'causal & window(ceil($w * n)) with $w = 0.05'
    """
    by_layer = []
    for l in range(stack.layers):
        exprs = {stack.rule_at(l, h)[0] for h in range(stack.heads)}
        by_layer.append(next(iter(exprs)) if len(exprs) == 1 else " / ".join(sorted(exprs)))
    text = by_layer[0] if len(set(by_layer)) == 1 else "; ".join(
        f"layer {l}: {text}" for l, text in enumerate(by_layer))
    if stack.params:
        text += " with " + ", ".join(f"${name} = {value:.4g}" if isinstance(value, float) else
                                      f"${name} = {value}" for name, value in stack.params)
    return text


@functools.lru_cache(maxsize=32)
def _causal_block_density(n: int, block: tuple[int, int]) -> float:
    return patternc.compile("causal", n, block=block).stats().per_head[0].block_density


def density_vs_causal(cp: CompiledPattern) -> float:
    """Mean block density over every layer and head of ``cp``, as a fraction of dense causal's at the
    same ``n`` and block: what the density budget limits, and about what a block-sparse kernel pays.

    >>> density_vs_causal(patternc.compile("causal & window(ceil(n / 8))", 16384))   # doctest: +SKIP
    0.247
    """
    per_head = cp.stats().per_head
    return sum(s.block_density for s in per_head) / len(per_head) / _causal_block_density(cp.n, cp.block)


class Objective:
    """Callable for ``study.optimize``: returns ``(accuracy, cost)``."""

    def __init__(self, task: TaskConfig, space: SpaceConfig, kernel: KernelConfig, seed: int = 0):
        # every value is checked before the first trial: search.validate.check_search (run_search)
        self.task = dataclasses.replace(task, n=space.n_proxy)
        self.space, self.kernel, self.seed = space, kernel, seed

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        durations: dict[str, float] = {}
        start = time.perf_counter()
        reference = trial.user_attrs.get(record.REFERENCE)
        stack = reference_stack(self.space, reference, trial) if reference else suggest(trial, self.space)
        trial.set_user_attr(record.STACK, stack.to_dict())
        trial.set_user_attr(record.EXPRESSION, describe(stack))
        try:
            target = patternc.compile(stack, self.space.n_target, block=self.space.target_block)
            proxy = patternc.compile(stack, self.space.n_proxy, block=self.space.block)
            density = density_vs_causal(target)
            proxy_per_head = proxy.stats().per_head
            proxy_density = sum(s.token_density for s in proxy_per_head) / len(proxy_per_head)
        except PatternError as error:  # e.g. a parameter that makes a window 0 wide
            durations["compile"] = time.perf_counter() - start
            trial.set_user_attr(record.DURATIONS, durations)
            self._reject(trial, f"does not compile: {error.message}")
        durations["compile"] = time.perf_counter() - start

        start = time.perf_counter()
        depth = patternc.reach(proxy, max_depth=self.space.layers).mixing_depth
        durations["reach"] = time.perf_counter() - start
        trial.set_user_attr(record.DENSITY, density)
        trial.set_user_attr(record.PROXY_DENSITY, proxy_density)
        trial.set_user_attr(record.MIXING_DEPTH, depth)
        trial.set_user_attr(record.DURATIONS, durations)
        reasons = []
        for name, excess, reason in self._constraints(density, proxy_density, depth):
            trial.set_constraint(name, excess)
            if excess > 0:
                reasons.append(reason)
        if reasons and not reference:
            self._reject(trial, "; ".join(reasons))

        start = time.perf_counter()
        cost = self._cost(target)
        durations["cost"] = time.perf_counter() - start
        trial.set_user_attr(record.COST, cost)
        trial.set_user_attr(record.DURATIONS, durations)

        result = evaluate(proxy, self.task, seed=self.seed)
        durations["train"] = result.wall_seconds
        trial.set_user_attr(record.DURATIONS, durations)
        trial.set_user_attr(record.BUCKETS, result.buckets)
        trial.set_user_attr(record.CHANCE, result.chance)
        if result.status != "ok":
            trial.set_user_attr(record.STATUS, "diverged")
            raise Diverged(result.failure)
        trial.set_user_attr(record.STATUS, "ok")
        trial.set_user_attr(record.ACCURACY, result.accuracy)
        return result.accuracy, cost["ratio"]

    def _constraints(self, density: float, proxy_density: float,
                     depth: int | None) -> list[tuple[str, float, str]]:
        """(name, value, reason): Optuna's constraint values (feasible when <= 0) and, for each, why
        a candidate exceeding it is rejected."""
        space = self.space
        mixes = depth is not None and depth <= space.layers
        return [
            ("density", density - space.density_budget,
             f"density {density:.3f} of dense causal at n = {space.n_target} is over the budget "
             f"{space.density_budget}"),
            # a pattern that rounds to (nearly) dense at the proxy length would be credited with dense
            # accuracy while it is sparse at n_target: its proxy accuracy says nothing
            ("proxy_density", proxy_density - space.density_budget,
             f"allows {proxy_density:.3f} of the causal pairs at n = {space.n_proxy}, over the budget "
             f"{space.density_budget}: its proxy accuracy would not speak for n = {space.n_target}"),
            ("mixing", 0.0 if mixes or not space.require_mixing else 1.0,
             f"does not reach every causal pair within {space.layers} layers at n = {space.n_proxy}"),
        ]

    def _cost(self, cp: CompiledPattern) -> dict:
        """Mean measured latency over the layers (each distinct layer timed once), against dense."""
        k = self.kernel
        by_layout: dict[str, patternc.Measurement] = {}
        ratios, seconds, baseline = [], [], []
        for layer in range(cp.layers):
            key = layout_hash(cp, layer)
            if key not in by_layout:
                by_layout[key] = patternc.measure(cp, batch=k.batch, head_dim=k.head_dim, backend=k.backend,
                                                  dtype=getattr(torch, k.dtype), layer=layer,
                                                  repeats=k.repeats, warmup=k.warmup, device=k.device)
            m = by_layout[key]
            ratios.append(m.ratio)
            seconds.append(m.seconds)
            baseline.append(m.baseline_seconds)
        return {"ratio": sum(ratios) / len(ratios), "seconds": sum(seconds),
                "baseline_seconds": sum(baseline), "backend": k.backend, "n": cp.n, "dtype": k.dtype,
                "device": next(iter(by_layout.values())).device,
                "distinct_layers": len(by_layout)}

    @staticmethod
    def _reject(trial: optuna.Trial, reason: str):
        trial.set_user_attr(record.STATUS, "rejected")
        trial.set_user_attr(record.REJECTED, reason)
        raise optuna.TrialPruned(reason)
