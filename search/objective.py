"""One trial of the search: candidate -> checks on the target -> measured cost -> proxy accuracy.

1. the space suggests a candidate (or a reference trial names a classic pattern): the target's
   stack and the proxy's (``search.space.build`` maps one onto the other);
2. the target's is compiled at ``target.n`` on the kernel's tile, the proxy's at ``proxy.n``;
3. constraints, in milliseconds to a second, all on the *target*: mean block density at
   ``target.n`` within the budget (as a fraction of dense causal's), every causal pair reached
   within ``target.layers`` (``patternc.reach``: exact up to 8k tokens, sound block bounds beyond;
   a candidate is rejected only when it certainly does not mix, and ``mixing_certified`` says
   whether it certainly does), the KV cache within ``kv_budget`` when one is set; and at the proxy,
   the share of causal pairs it allows within the density budget too (a pattern that rounds to
   dense at the proxy length would be credited with dense accuracy). A failing candidate is
   recorded with its reason and pruned: it never reaches the kernel or the training;
4. a candidate whose layouts at both lengths equal an earlier trial's reuses that trial's result;
5. cost: ``patternc.measure`` on every distinct layer at ``target.n`` with the target's heads and
   head size (cached on disk), the mean latency as a fraction of dense causal SDPA's;
6. accuracy: ``search.evaluate`` on the proxy task at ``proxy.n``; with ``task.train.screen``, a
   checkpoint is scored first and only candidates near the front so far train their full budget.

Everything found is a trial attribute (keys in ``search.record``).

>>> from search.config import ModelConfig, MQARConfig, ParamSpec, ProxyConfig, TargetConfig, TrainConfig
>>> task = MQARConfig(n=32, pairs=3, distances=[2, 8, 32], model=ModelConfig(d_model=16, head_dim=4),
...                   train=TrainConfig(steps=4, batch=4, eval_sequences=16, threads=1))  # a smoke-test size
>>> space = SpaceConfig(name="window", template="causal & window(ceil($w * n))",
...                     params={"w": ParamSpec(type="float", low=0.05, high=0.5)},
...                     target=TargetConfig(layers=2, heads=4, head_dim=16, n=512, block=64),
...                     proxy=ProxyConfig(n=32, block=8), density_budget=0.5, require_mixing=False)
>>> study = optuna.create_study(directions=["maximize", "minimize"])  # accuracy, cost
>>> study.enqueue_trial({"w": 0.05})
>>> study.enqueue_trial({"w": 0.5})  # a window of half the sequence: over the density budget
>>> study.optimize(Objective(task, space, KernelConfig(repeats=1, warmup=0), seed=0), n_trials=2)
>>> [(t.state.name, t.user_attrs["status"]) for t in study.trials]
[('COMPLETE', 'ok'), ('PRUNED', 'rejected')]
>>> study.trials[1].user_attrs["rejected"]  # doctest: +ELLIPSIS
'density 0.833 of dense causal at n = 512 is over the budget 0.5; ...'
>>> study.trials[0].user_attrs["cost"]["n"], sorted(study.trials[0].constraints)  # cost measured at target.n
(512, ['density', 'mixing', 'proxy_density'])
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import time

import numpy as np
import optuna
import torch

import patternc
from patternc import CompiledPattern, PatternError, Stack, layout_hash
from search import record
from search.calibrate import calibration_task
from search.config import KernelConfig, SpaceConfig, TaskConfig
from search.evaluate import EvalResult, evaluate
from search.space import reference, suggest

__all__ = ["Diverged", "Objective", "density_vs_causal", "describe", "layout_key"]


class Diverged(RuntimeError):
    """Training under the candidate ended with a NaN or infinite loss (the trial is FAIL)."""


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


@functools.lru_cache(maxsize=32)
def _causal_block_density(n: int, block: tuple[int, int]) -> float:
    return patternc.compile("causal", n, block=block).stats().per_head[0].block_density


def density_vs_causal(cp: CompiledPattern) -> float:
    """Mean block density over every layer and head of ``cp``, as a fraction of dense causal's at the
    same ``n`` and block: what the density budget limits, and about what a block-sparse kernel pays.

    >>> round(density_vs_causal(patternc.compile("causal & window(ceil(n / 8))", 16384)), 3)
    0.247
    """
    per_head = cp.stats().per_head
    return sum(s.block_density for s in per_head) / len(per_head) / _causal_block_density(cp.n, cp.block)


class Objective:
    """Callable for ``study.optimize``: returns ``(accuracy, cost)``."""

    def __init__(self, task: TaskConfig, space: SpaceConfig, kernel: KernelConfig, seed: int = 0):
        # every value is checked before the first trial: search.validate.check_search (run_search)
        self.task = dataclasses.replace(task, n=space.proxy.n)
        self.space, self.kernel, self.seed = space, kernel, seed

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        durations: dict[str, float] = {}
        start = time.perf_counter()
        ref = trial.user_attrs.get(record.REFERENCE)
        candidate = reference(self.space, ref, trial) if ref else suggest(trial, self.space)
        trial.set_user_attr(record.STACK, candidate.target.to_dict())
        trial.set_user_attr(record.PROXY_STACK, candidate.proxy.to_dict())
        trial.set_user_attr(record.EXPRESSION, describe(candidate.target))
        target_cfg, proxy_cfg = self.space.target, self.space.proxy
        try:
            target = patternc.compile(candidate.target, target_cfg.n, block=target_cfg.block)
            proxy = patternc.compile(candidate.proxy, proxy_cfg.n, block=proxy_cfg.block)
            density = density_vs_causal(target)
            proxy_per_head = proxy.stats().per_head
            proxy_density = sum(s.token_density for s in proxy_per_head) / len(proxy_per_head)
        except PatternError as error:  # e.g. a parameter that makes a window 0 wide
            durations["compile"] = time.perf_counter() - start
            trial.set_user_attr(record.DURATIONS, durations)
            self._reject(trial, f"does not compile: {error.message}")
        durations["compile"] = time.perf_counter() - start

        start = time.perf_counter()
        mixing = patternc.reach(target, max_depth=target_cfg.layers)
        kv = self._kv(target)
        durations["reach"] = time.perf_counter() - start
        certain, possible = mixing.covered_bounds  # at the target's own depth
        trial.set_user_attr(record.DENSITY, density)
        trial.set_user_attr(record.PROXY_DENSITY, proxy_density)
        trial.set_user_attr(record.MIXING_DEPTH, mixing.mixing_depth)
        trial.set_user_attr(record.MIXING_CERTIFIED, certain == 1.0)
        trial.set_user_attr(record.KV, kv)
        trial.set_user_attr(record.DURATIONS, durations)
        key = layout_key(target, proxy, target_pairs=calibration_task(self.task))
        trial.set_user_attr(record.LAYOUT_KEY, key)
        reasons = []
        for name, excess, reason in self._constraints(density, proxy_density, possible, kv["ratio"]):
            trial.set_constraint(name, excess)
            if excess > 0:
                reasons.append(reason)
        if reasons and not ref:
            self._reject(trial, "; ".join(reasons))

        earlier = _scored_with(trial.study, key)
        if earlier is not None and not ref:  # the same layouts: the same scores (search.record)
            for name in (record.COST, record.BUCKETS, record.CHANCE, record.ACCURACY, record.POOLED_ACCURACY,
                         record.FIDELITY, record.SCREEN_ACCURACY):
                if name in earlier.user_attrs:
                    trial.set_user_attr(name, earlier.user_attrs[name])
            trial.set_user_attr(record.REUSED_FROM, earlier.number)
            trial.set_user_attr(record.STATUS, "ok")
            return tuple(earlier.values)

        start = time.perf_counter()
        cost = self._cost(target)
        durations["cost"] = time.perf_counter() - start
        trial.set_user_attr(record.COST, cost)
        trial.set_user_attr(record.DURATIONS, durations)

        # references score at the checkpoint too (the yardsticks later candidates are screened
        # against) and always train on
        promote = lambda screened: self._promote(trial, screened, cost["ratio"], always=ref)  # noqa: E731
        # task=calibrate: the target's stack runs inside the pretrained model (its proxy is the target)
        result = evaluate(target if calibration_task(self.task) else proxy, self.task, seed=self.seed,
                          promote=promote)
        durations["train"] = result.wall_seconds
        trial.set_user_attr(record.DURATIONS, durations)
        self._record_result(trial, result)
        return result.score, cost["ratio"]

    def _record_result(self, trial: optuna.Trial, result: EvalResult) -> None:
        trial.set_user_attr(record.BUCKETS, result.buckets)
        trial.set_user_attr(record.CHANCE, result.chance)
        if result.screen_accuracy is not None:
            trial.set_user_attr(record.SCREEN_ACCURACY, result.screen_accuracy)
        full = calibration_task(self.task) or result.steps == self.task.train.steps
        trial.set_user_attr(record.FIDELITY, "full" if full else "screen")
        if result.status != "ok":
            trial.set_user_attr(record.STATUS, "diverged")
            raise Diverged(result.failure)
        trial.set_user_attr(record.STATUS, "ok")
        trial.set_user_attr(record.ACCURACY, result.score)
        trial.set_user_attr(record.POOLED_ACCURACY, result.accuracy)

    def _promote(self, trial: optuna.Trial, screened: float, cost: float, always: bool = False) -> bool:
        """Train on past the checkpoint unless an earlier trial, screened at the same step, was more
        accurate by ``promote_within`` at no more cost: the candidate is then off the front."""
        trial.set_user_attr(record.SCREEN_ACCURACY, screened)
        if always:
            return True
        margin = self.task.train.promote_within
        for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            theirs = other.user_attrs.get(record.SCREEN_ACCURACY)
            if theirs is not None and other.values[1] <= cost and theirs >= screened + margin:
                return False
        return True

    def _constraints(self, density: float, proxy_density: float, possible: float,
                     kv_ratio: float) -> list[tuple[str, float, str]]:
        """(name, value, reason): Optuna's constraint values (feasible when <= 0) and, for each, why
        a candidate exceeding it is rejected."""
        space = self.space
        target, proxy = space.target, space.proxy
        constraints = [
            ("density", density - space.density_budget,
             f"density {density:.3f} of dense causal at n = {target.n} is over the budget "
             f"{space.density_budget}"),
            # a pattern that rounds to (nearly) dense at the proxy length would be credited with dense
            # accuracy while it is sparse at target.n: its proxy accuracy says nothing
            ("proxy_density", proxy_density - space.density_budget,
             f"allows {proxy_density:.3f} of the causal pairs at n = {proxy.n}, over the budget "
             f"{space.density_budget}: its proxy accuracy would not speak for n = {target.n}"),
            # the upper bound: only a candidate that certainly does not mix is refused
            ("mixing", 0.0 if possible == 1.0 or not space.require_mixing else 1.0,
             f"does not reach every causal pair within the target's {target.layers} layers at n = "
             f"{target.n} (at most {possible:.1%} of them)"),
        ]
        if space.kv_budget is not None:
            constraints.append(("kv", kv_ratio - space.kv_budget,
                                f"keeps {kv_ratio:.3f} of a dense KV cache at n = {target.n}, over the "
                                f"budget {space.kv_budget}"))
        return constraints

    def _kv(self, cp: CompiledPattern) -> dict:
        """The target's KV cache against a dense one (a causal target; 1.0 when it is not causal)."""
        t = self.space.target
        if not cp.causal:
            return {"ratio": 1.0, "bytes": None, "max_live_keys": None}
        report = patternc.kv(cp, kv_heads=t.kv_heads, head_dim=t.head_dim,
                             dtype={"float32": "float32"}.get(self.kernel.dtype, "bfloat16"))
        return {"ratio": report.ratio, "bytes": report.bytes,
                "max_live_keys": max(max(row) for row in report.max_live_keys)}

    def _cost(self, cp: CompiledPattern) -> dict:
        """Mean measured latency over the layers (each distinct layer timed once), against dense."""
        k, t = self.kernel, self.space.target
        by_layout: dict[str, patternc.Measurement] = {}
        ratios, seconds, baseline = [], [], []
        for layer in range(cp.layers):
            key = layout_hash(cp, layer)
            if key not in by_layout:
                by_layout[key] = patternc.measure(cp, batch=k.batch, head_dim=t.head_dim, backend=k.backend,
                                                  dtype=getattr(torch, k.dtype), layer=layer,
                                                  repeats=k.repeats, warmup=k.warmup, device=k.device,
                                                  phase=k.phase, context=k.context)
            m = by_layout[key]
            ratios.append(m.ratio)
            seconds.append(m.seconds)
            baseline.append(m.baseline_seconds)
        return {"ratio": sum(ratios) / len(ratios), "seconds": sum(seconds),
                "baseline_seconds": sum(baseline), "backend": k.backend, "n": cp.n, "dtype": k.dtype,
                "phase": k.phase, "context": next(iter(by_layout.values())).context,
                "device": next(iter(by_layout.values())).device,
                "distinct_layers": len(by_layout)}

    @staticmethod
    def _reject(trial: optuna.Trial, reason: str):
        trial.set_user_attr(record.STATUS, "rejected")
        trial.set_user_attr(record.REJECTED, reason)
        raise optuna.TrialPruned(reason)


def layout_key(target: CompiledPattern, proxy: CompiledPattern, target_pairs: bool = False) -> str:
    """One hash of what a trial is scored on: two candidates with equal keys score alike. The
    proxy's token pairs (what the model trains on: ``sink(4)`` and ``sink(64)`` store the same
    32-token blocks but not the same pairs) and the target's blocks (cost, density and reach are
    per block), or with ``target_pairs`` its pairs too (task=calibrate runs the target stack in a
    pretrained model, whose output changes with every pair)."""
    digest = hashlib.sha256()
    for cp, pairs in ((target, target_pairs), (proxy, True)):
        for layer in range(cp.layers):
            digest.update(layout_hash(cp, layer).encode())
            for head in range(cp.heads if pairs else 0):
                digest.update(np.packbits(cp.to_bsr(layer, head, with_masks=True).masks).tobytes())
    return digest.hexdigest()[:32]


def _scored_with(study: optuna.Study, key: str) -> optuna.trial.FrozenTrial | None:
    """An earlier trial scored on these layouts (complete, trained, not itself reused), or None."""
    for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        attrs = other.user_attrs
        if attrs.get(record.LAYOUT_KEY) == key and attrs.get(record.STATUS) == "ok" \
                and record.REUSED_FROM not in attrs:
            return other
    return None
