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
6. accuracy: the scorer's (``search.scorer``: from scratch, adapted from the dense proxy, or a
   calibrated pretrained model) on the proxy layout at ``proxy.n``, or a full score kept in the
   artifact store by a study of the same scorer definition; with ``task.train.rungs``, a candidate
   is scored at each rung and only those near the front so far go on.

Everything found is one ``search.record.TrialRecord``, written once when the trial ends.

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
>>> [(t.state.name, record.read(t).status) for t in study.trials]
[('COMPLETE', 'ok'), ('PRUNED', 'rejected')]
>>> record.read(study.trials[1]).rejected  # doctest: +ELLIPSIS
'density 0.833 of dense causal at n = 512 is over the budget 0.5; ...'
>>> record.read(study.trials[0]).cost["n"], sorted(study.trials[0].constraints)  # cost measured at target.n
(512, ['density', 'mixing', 'proxy_density'])
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch

import patternc
from patternc import CompiledPattern, PatternError, layout_hash
from search import record
from search.artifacts import Store
from search.config import KernelConfig, SpaceConfig, TargetConfig, TaskConfig
from search.evaluate import EvalResult, describe
from search.scorer import Scorer, make_scorer, result_from_dict
from search.space import Candidate, reference, suggest

__all__ = ["Assessment", "Diverged", "Objective", "assess", "density_vs_causal", "describe", "fits",
           "keep_score", "layout_key", "measured_cost", "pairs_key", "stored_score"]


class Diverged(RuntimeError):
    """Training under the candidate ended with a NaN or infinite loss (the trial is FAIL)."""


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


@dataclass(frozen=True)
class Assessment:
    """A candidate's layouts and what the space's budgets say of them, before any kernel or training."""

    target: CompiledPattern  # at target.n on the kernel's tile
    proxy: CompiledPattern  # at proxy.n
    density: float  # density_vs_causal(target)
    proxy_density: float  # share of the causal pairs the proxy allows (mean over layers and heads)
    mixing_depth: int | None
    mixing_certified: bool  # certainly reaches every causal pair within target.layers
    kv: dict  # ratio to a dense cache, bytes, max_live_keys
    constraints: list[tuple[str, float, str]]  # (name, excess: feasible when <= 0, why it is rejected)
    seconds: dict[str, float]  # compile, reach

    @property
    def reasons(self) -> list[str]:
        """Why the candidate is rejected: one reason per constraint it exceeds (empty: feasible)."""
        return [reason for _, excess, reason in self.constraints if excess > 0]


def assess(candidate: Candidate, space: SpaceConfig, dtype: str = "float32") -> Assessment:
    """Compile ``candidate`` at both lengths and check it against ``space``'s budgets (step 3 above):
    what a trial records and rejects on, and what the initial design is filtered by. Raises
    ``PatternError`` when a stack does not compile.

    >>> from search.config import ParamSpec
    >>> from search.space import build
    >>> space = SpaceConfig(template="causal & window(ceil($w * n))", density_budget=0.5,
    ...                     params={"w": ParamSpec(type="float", low=0.01, high=0.5)}, require_mixing=False)
    >>> assess(build(space, {"w": 0.5}, ["template"] * 2), space).reasons  # doctest: +ELLIPSIS
    ['density 0.762 of dense causal at n = 8192 is over the budget 0.5', 'allows 0.749 ...']
    >>> assess(build(space, {"w": 0.05}, ["template"] * 2), space).reasons
    []
    """
    target_cfg, proxy_cfg = space.target, space.proxy
    start = time.perf_counter()
    target = patternc.compile(candidate.target, target_cfg.n, block=target_cfg.block)
    proxy = patternc.compile(candidate.proxy, proxy_cfg.n, block=proxy_cfg.block)
    density = density_vs_causal(target)
    proxy_per_head = proxy.stats().per_head
    proxy_density = sum(s.token_density for s in proxy_per_head) / len(proxy_per_head)
    compiled = time.perf_counter()
    mixing = patternc.reach(target, max_depth=target_cfg.layers)
    kv = _kv(target, space, dtype)
    certain, possible = mixing.covered_bounds  # at the target's own depth
    constraints = [
        ("density", density - space.density_budget,
         f"density {density:.3f} of dense causal at n = {target_cfg.n} is over the budget "
         f"{space.density_budget}"),
        # a pattern that rounds to (nearly) dense at the proxy length would be credited with dense
        # accuracy while it is sparse at target.n: its proxy accuracy says nothing
        ("proxy_density", proxy_density - space.density_budget,
         f"allows {proxy_density:.3f} of the causal pairs at n = {proxy_cfg.n}, over the budget "
         f"{space.density_budget}: its proxy accuracy would not speak for n = {target_cfg.n}"),
        # the upper bound: only a candidate that certainly does not mix is refused
        ("mixing", 0.0 if possible == 1.0 or not space.require_mixing else 1.0,
         f"does not reach every causal pair within the target's {target_cfg.layers} layers at n = "
         f"{target_cfg.n} (at most {possible:.1%} of them)"),
    ]
    if space.kv_budget is not None:
        constraints.append(("kv", kv["ratio"] - space.kv_budget,
                            f"keeps {kv['ratio']:.3f} of a dense KV cache at n = {target_cfg.n}, over the "
                            f"budget {space.kv_budget}"))
    return Assessment(target=target, proxy=proxy, density=density, proxy_density=proxy_density,
                      mixing_depth=mixing.mixing_depth, mixing_certified=certain == 1.0, kv=kv,
                      constraints=constraints,
                      seconds={"compile": compiled - start, "reach": time.perf_counter() - compiled})


def fits(space: SpaceConfig, params: dict[str, Any]) -> bool:
    """Whether the candidate Optuna ``params`` describe compiles and meets every budget of ``space``.

    >>> from search.config import ParamSpec
    >>> space = SpaceConfig(template="causal & window(ceil($w * n))", density_budget=0.5,
    ...                     params={"w": ParamSpec(type="float", low=0.01, high=0.5)}, require_mixing=False)
    >>> fits(space, {"w": 0.5}), fits(space, {"w": 0.05})
    (False, True)
    """
    try:
        return not assess(suggest(optuna.trial.FixedTrial(params), space), space).reasons
    except PatternError:
        return False


def _kv(cp: CompiledPattern, space: SpaceConfig, dtype: str) -> dict:
    """The target's KV cache against a dense one (a causal target; 1.0 when it is not causal)."""
    t = space.target
    if not cp.causal:
        return {"ratio": 1.0, "bytes": None, "max_live_keys": None}
    report = patternc.kv(cp, kv_heads=t.kv_heads, head_dim=t.head_dim,
                         dtype={"float32": "float32"}.get(dtype, "bfloat16"))
    return {"ratio": report.ratio, "bytes": report.bytes,
            "max_live_keys": max(max(row) for row in report.max_live_keys)}


class Objective:
    """Callable for ``study.optimize``: returns ``(accuracy, cost)``; records one ``TrialRecord``.

    ``scorer`` (``search.scorer.make_scorer``: chosen once from the task) scores the proxy's layout;
    ``store``, when given, holds full scores any study of the same scorer definition reuses."""

    def __init__(self, task: TaskConfig, space: SpaceConfig, kernel: KernelConfig, seed: int = 0,
                 scorer: Scorer | None = None, store: Store | None = None):
        # every value is checked before the first trial: search.scorer.check_search (run_search)
        self.scorer = scorer if scorer is not None else make_scorer(task, space, seed)
        self.space, self.kernel, self.seed, self.store = space, kernel, seed, store
        self.worker: dict | None = None  # set by the study's wrapper: who runs the trials
        self._prepared = False

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        found: dict = {"scorer": self.scorer.name, "worker": self.worker,
                       "reference": trial.user_attrs.get(record.REFERENCE)}
        # while it runs, the record says who runs it (an operator, or a test, pre-empting a worker
        # finds its process there); the trial's end replaces it with what the trial found
        running = record.TrialRecord(status="running", scorer=self.scorer.name, worker=self.worker,
                                     reference=found["reference"])
        trial.set_user_attr(record.RECORD, running.to_attr())
        try:
            return self._run(trial, found)
        finally:  # the final record, whatever ended the trial (a rejection, a divergence, a score)
            trial.set_user_attr(record.RECORD, record.TrialRecord(**found).to_attr())

    def _run(self, trial: optuna.Trial, found: dict) -> tuple[float, float]:
        durations: dict[str, float] = {}
        found["durations"] = durations
        ref = found["reference"]
        candidate = reference(self.space, ref, trial) if ref else suggest(trial, self.space)
        found.update(stack=candidate.target.to_dict(), proxy_stack=candidate.proxy.to_dict(),
                     expression=describe(candidate.target))
        start = time.perf_counter()
        try:
            checked = assess(candidate, self.space, self.kernel.dtype)
        except PatternError as error:  # e.g. a parameter that makes a window 0 wide
            durations["compile"] = time.perf_counter() - start  # as assess times a compile that succeeds
            self._reject(found, f"does not compile: {error.message}")
        durations.update(checked.seconds)
        target, proxy = checked.target, checked.proxy
        key = layout_key(target, proxy)
        found.update(density=checked.density, proxy_density=checked.proxy_density,
                     mixing_depth=checked.mixing_depth, mixing_certified=checked.mixing_certified,
                     kv=checked.kv, layout_key=key)
        for name, excess, _ in checked.constraints:
            trial.set_constraint(name, excess)
        if checked.reasons and not ref:
            self._reject(found, "; ".join(checked.reasons))

        earlier = _scored_with(trial.study, key)
        if earlier is not None and not ref:  # the same layouts: the same scores
            theirs = record.read(earlier)
            found.update(cost=theirs.cost, buckets=theirs.buckets, chance=theirs.chance,
                         accuracy=theirs.accuracy, pooled_accuracy=theirs.pooled_accuracy,
                         fidelity=theirs.fidelity, screen_accuracy=theirs.screen_accuracy,
                         rungs=theirs.rungs, reused_from=earlier.number, status="ok")
            return tuple(earlier.values)

        start = time.perf_counter()
        cost = measured_cost(target, self.kernel, self.space.target)
        durations["cost"] = time.perf_counter() - start
        found["cost"] = cost

        stored = stored_score(self.store, self.scorer, proxy)
        if stored is not None:  # scored in full by a study of the same scorer definition
            found["reused_from"] = "store"
            self._record_result(found, stored)
            return stored.score, cost["ratio"]
        if not self._prepared:
            self.scorer.prepare(self.store)  # the dense reference, trained or loaded once
            self._prepared = True
        # references score at each rung too (the yardsticks later candidates are screened against)
        # and always go on
        promote = lambda step, score: self._promote(trial, step, score, cost["ratio"], always=bool(ref))  # noqa: E731
        result = self.scorer.score(proxy, promote)
        durations["train"] = result.wall_seconds
        self._record_result(found, result)
        if found["fidelity"] == "full" and result.status == "ok":
            keep_score(self.store, self.scorer, proxy, result)
        return result.score, cost["ratio"]

    def _record_result(self, found: dict, result: EvalResult) -> None:
        rungs = result.extra.get("rungs")
        found.update(buckets=result.buckets, chance=result.chance, fidelity=self.scorer.fidelity(result),
                     rungs=rungs, screen_accuracy=rungs[-1][1] if rungs else None)
        if result.status != "ok":
            found["status"] = "diverged"
            raise Diverged(result.failure)
        found.update(status="ok", accuracy=result.score, pooled_accuracy=result.accuracy)

    def _promote(self, trial: optuna.Trial, step: int, score: float, cost: float,
                 always: bool = False) -> bool:
        """Go on past rung ``step`` unless an earlier trial, scored at the same rung, was better by
        ``promote_within`` at no more cost: the candidate is then off the front."""
        if always:
            return True
        margin = self.scorer.task.train.promote_within
        for other in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            found = record.read(other)
            theirs = dict(map(tuple, found.rungs or ()))
            if found.rungs is None and found.screen_accuracy is not None:  # a study from before rungs:
                theirs = {step: found.screen_accuracy}  # its one checkpoint, where the one rung is
            if step in theirs and other.values[1] <= cost and theirs[step] >= score + margin:
                return False
        return True

    @staticmethod
    def _reject(found: dict, reason: str):
        found.update(status="rejected", rejected=reason)
        raise optuna.TrialPruned(reason)


def measured_cost(cp: CompiledPattern, kernel: KernelConfig, target: TargetConfig,
                  cache: bool = True) -> dict:
    """Mean measured latency of ``cp`` over its layers (each distinct layer timed once), against dense,
    with the mean of the layers' spreads (the middle half of each one's repeated ratios): a trial's
    cost. ``cache=False`` measures afresh instead of reading a figure kept on disk."""
    by_layout: dict[str, patternc.Measurement] = {}
    ratios, lows, highs, seconds, baseline = [], [], [], [], []
    for layer in range(cp.layers):
        key = layout_hash(cp, layer)
        if key not in by_layout:
            by_layout[key] = patternc.measure(cp, batch=kernel.batch, head_dim=target.head_dim,
                                              backend=kernel.backend, dtype=getattr(torch, kernel.dtype),
                                              layer=layer, repeats=kernel.repeats, warmup=kernel.warmup,
                                              device=kernel.device, phase=kernel.phase,
                                              context=kernel.context, cache=cache)
        m = by_layout[key]
        ratios.append(m.ratio)
        lows.append(m.ratio_low)
        highs.append(m.ratio_high)
        seconds.append(m.seconds)
        baseline.append(m.baseline_seconds)
    first = next(iter(by_layout.values()))
    return {"ratio": sum(ratios) / len(ratios), "ratio_low": sum(lows) / len(lows),
            "ratio_high": sum(highs) / len(highs), "seconds": sum(seconds),
            "baseline_seconds": sum(baseline), "backend": kernel.backend, "n": cp.n, "dtype": kernel.dtype,
            "phase": kernel.phase, "context": first.context, "device": first.device,
            "distinct_layers": len(by_layout)}


def _score_name(scorer: Scorer, proxy: CompiledPattern) -> str:
    digest = hashlib.sha256((scorer.definition_hash() + pairs_key(proxy)).encode()).hexdigest()[:32]
    return f"score-{digest}.json"


def stored_score(store: Store | None, scorer: Scorer, proxy: CompiledPattern) -> EvalResult | None:
    """The full score of ``proxy`` under ``scorer``'s definition that a study (or a benchmark) kept in
    ``store``, if any: the same layout under the same definition scores the same."""
    data = store.get(_score_name(scorer, proxy)) if store is not None else None
    return None if data is None else result_from_dict(json.loads(data))


def keep_score(store: Store | None, scorer: Scorer, proxy: CompiledPattern, result: EvalResult) -> None:
    """Keep ``result``, a full score of ``proxy`` under ``scorer``, for ``stored_score``."""
    if store is not None:
        store.put(_score_name(scorer, proxy), json.dumps(result.to_dict()).encode())


def pairs_key(cp: CompiledPattern) -> str:
    """One hash of every token pair ``cp`` allows, layer by layer and head by head: what a model
    under it computes with (``sink(4)`` and ``sink(64)`` store the same 32-token blocks, not the
    same pairs)."""
    digest = hashlib.sha256()
    for layer in range(cp.layers):
        digest.update(layout_hash(cp, layer).encode())
        for head in range(cp.heads):
            digest.update(np.packbits(cp.to_bsr(layer, head, with_masks=True).masks).tobytes())
    return digest.hexdigest()[:32]


def layout_key(target: CompiledPattern, proxy: CompiledPattern) -> str:
    """One hash of what a trial is scored on: two candidates with equal keys score alike. The
    proxy's token pairs (what the proxy is scored under: ``pairs_key``) and the target's blocks
    (cost, density and reach are per block)."""
    digest = hashlib.sha256(pairs_key(proxy).encode())
    for layer in range(target.layers):
        digest.update(layout_hash(target, layer).encode())
    return digest.hexdigest()[:32]


def _scored_with(study: optuna.Study, key: str) -> optuna.trial.FrozenTrial | None:
    """An earlier trial scored on these layouts (complete, scored, not itself reused), or None."""
    for other in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        theirs = record.read(other)
        if theirs.layout_key == key and theirs.status == "ok" and theirs.reused_from is None:
            return other
    return None
