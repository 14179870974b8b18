"""Is a study finished? What its trials spent, where each reference stands, what still runs.

A study is *finished* when its budget is spent (``search.n_trials`` counted trials), every reference
(classic pattern) has been scored, and no trial is RUNNING or WAITING. Every worker ends on this
account, and the report states it: a study is never shown as finished while a trial runs or a
reference was never scored.

A reference trial can exist more than once: any worker that opens the study enqueues a reference
that has no live trial (the creating worker may have died between two enqueues, or a trial failed
on a fault since fixed), so two workers may enqueue the same one. The lowest-numbered live copy
speaks for the reference; the others are pruned as duplicates when they come up, before any work.

>>> from optuna.trial import create_trial
>>> trials = [create_trial(values=[0.9, 1.0], user_attrs={"reference": "dense_causal"}),  # [accuracy, cost]
...           create_trial(values=[0.7, 0.3]),
...           create_trial(state=TrialState.PRUNED, user_attrs={"status": "rejected"})]  # not counted
>>> account(trials, budget=2, references=["dense_causal"]).finished
True
>>> print(account(trials, budget=3, references=["dense_causal", "longformer"]).describe())
... # doctest: +NORMALIZE_WHITESPACE
NOT finished: 2 of 3 budgeted trials counted, 1 of 2 references scored; reference longformer missing;
1 budgeted trials to go
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from search import record

__all__ = ["Account", "account", "counted", "missing_references", "rejection_reasons", "speaks_for", "spent"]

_LIVE = (TrialState.WAITING, TrialState.RUNNING)


def counted(trial: FrozenTrial) -> bool:
    """Does a trial spend the budget? Scored trials do, and so do trials whose training diverged
    (an outcome of the candidate). Rejected candidates (PRUNED, milliseconds) do not, nor do trials
    failed because their worker died or a fault stopped them: those are retried."""
    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and record.read(trial).status == "diverged")


def spent(trials: Iterable[FrozenTrial]) -> int:
    return sum(map(counted, trials))


def _copies(trials: Iterable[FrozenTrial], name: str) -> list[FrozenTrial]:
    return [t for t in trials if record.read(t).reference == name
            and record.read(t).status != "duplicate"]


def reference_state(trials: Sequence[FrozenTrial], name: str) -> str:
    """``scored``, ``diverged``, ``running``, ``waiting``, ``failed`` (every copy FAIL) or ``missing``."""
    copies = _copies(trials, name)
    if any(t.state == TrialState.COMPLETE for t in copies):
        return "scored"
    if any(counted(t) for t in copies):
        return "diverged"
    for state in _LIVE[::-1]:
        if any(t.state == state for t in copies):
            return state.name.lower()
    return "failed" if copies else "missing"


def missing_references(trials: Sequence[FrozenTrial], names: Iterable[str]) -> list[str]:
    """References with no trial that is scored, running or waiting: the ones to enqueue."""
    return [name for name in names if reference_state(trials, name) in ("failed", "missing")]


def speaks_for(trials: Sequence[FrozenTrial], name: str, number: int) -> int | None:
    """The trial that already speaks for reference ``name``, if it is not trial ``number``: a counted
    copy, or a live copy numbered lower. None: trial ``number`` is the one to run."""
    for t in _copies(trials, name):
        if t.number != number and (counted(t) or (t.state in _LIVE and t.number < number)):
            return t.number
    return None


@dataclass(frozen=True, slots=True)
class Account:
    """Where a study stands against its budget and references."""

    budget: int
    spent: int
    references: tuple[tuple[str, str], ...]  # (name, reference_state)
    running: tuple[int, ...]  # trial numbers
    waiting: tuple[int, ...]

    @property
    def unscored(self) -> tuple[str, ...]:
        return tuple(name for name, state in self.references if state not in ("scored", "diverged"))

    @property
    def finished(self) -> bool:
        return self.spent >= self.budget and not self.running and not self.waiting and not self.unscored

    def describe(self) -> str:
        """One line: ``finished: 12 of 12 ...`` or ``NOT finished: ...`` with what is missing."""
        head = (f"{self.spent} of {self.budget} budgeted trials counted, "
                f"{len(self.references) - len(self.unscored)} of {len(self.references)} references scored")
        if self.finished:
            return f"finished: {head}"
        gaps = []
        if self.running:
            gaps.append(f"trial {', '.join(map(str, self.running))} still RUNNING")
        if self.waiting:
            gaps.append(f"trial {', '.join(map(str, self.waiting))} WAITING")
        gaps += [f"reference {name} {state}" for name, state in self.references
                 if name in self.unscored and state not in ("running", "waiting")]
        if self.spent < self.budget:
            gaps.append(f"{self.budget - self.spent} budgeted trials to go")
        return f"NOT finished: {head}; {'; '.join(gaps)}"


def account(trials: Sequence[FrozenTrial], budget: int, references: Iterable[str]) -> Account:
    return Account(budget=budget, spent=spent(trials),
                   references=tuple((name, reference_state(trials, name)) for name in references),
                   running=tuple(t.number for t in trials if t.state == TrialState.RUNNING),
                   waiting=tuple(t.number for t in trials if t.state == TrialState.WAITING))


def rejection_reasons(trials: Iterable[FrozenTrial]) -> list[tuple[int, str, bool]]:
    """Rejected candidates grouped by reason, commonest first: (count, first example, numbers vary).
    Numbers are masked for the grouping, so "density 0.61 > 0.5" and "density 0.72 > 0.5" are one."""
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for t in trials:
        if record.read(t).status == "rejected":
            reason = str(record.read(t).rejected or "no reason recorded")
            groups[re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", reason)].append(reason)
    return [(len(examples), examples[0], len(set(examples)) > 1)
            for examples in sorted(groups.values(), key=len, reverse=True)]
