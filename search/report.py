"""The outputs of a search run: every trial as CSV, the Pareto front as CSV, markdown, a picture and
ready-to-use pattern files, and a short summary.

    out_dir/trials.csv  pareto.csv  pareto.md  pareto.png  summary.md
    out_dir/patterns/01_<slug>.yaml           # drops into conf/pattern/
    out_dir/patterns/01_<slug>.safetensors    # its layout at target.n (patternc.load)

The front is taken among COMPLETE feasible trials only: rejected candidates are PRUNED with no
values, and infeasible reference trials are scored to be drawn beside the front, never on it.

>>> from optuna.trial import create_trial
>>> from search.config import TargetConfig
>>> def scored(expr, accuracy, cost, **attrs):  # a finished trial, as the objective records it
...     return create_trial(values=[accuracy, cost], user_attrs={
...         "expression": expr, "status": "ok", "stack": {"default": expr, "layers": 2}, **attrs})
>>> study = optuna.create_study(directions=["maximize", "minimize"])  # accuracy, cost
>>> study.add_trials([scored("causal", 0.9, 1.0, reference="dense_causal"),
...                   scored("causal & window(64)", 0.8, 0.3),
...                   scored("causal & window(16)", 0.5, 0.4, reference="local")])
>>> space = SpaceConfig(name="window", target=TargetConfig(n=1024))
>>> report = write_report(study, space, tmp_path / "run", "mqar")
>>> [t.user_attrs["expression"] for t in report.front], report.dominated  # trial 1 beats local
(['causal & window(64)', 'causal'], {1: ['local']})
>>> [p.name for p in report.patterns]  # doctest: +NORMALIZE_WHITESPACE
['01_window_trial1.yaml', '01_window_trial1.safetensors',
 '02_dense_causal.yaml', '02_dense_causal.safetensors']
"""

from __future__ import annotations

import collections
import csv
import itertools
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
import yaml
from matplotlib.figure import Figure  # no pyplot: no global figure state; savefig renders with Agg
from optuna.trial import FrozenTrial

import patternc
from patternc import Stack
from search import record as R
from search.accounting import Account, rejection_reasons
from search.config import SpaceConfig
from search.pareto import dominated_pairs, pareto_front
from search.record import comparable, feasible, fidelity, scored
from search.report_html import write_report_html

__all__ = ["Report", "comparable", "feasible", "fidelity", "front_trials", "pareto_figure", "pareto_markdown",
           "scored", "summary_markdown", "trial_rows", "write_report"]

_STAGES = ("compile", "reach", "cost", "train")  # the objective's stages, in the order they run


@dataclass(frozen=True, slots=True)
class Report:
    """What ``write_report`` wrote, and the front it found (sorted by cost, cheapest first)."""

    out_dir: pathlib.Path
    trials_csv: pathlib.Path
    pareto_csv: pathlib.Path
    pareto_md: pathlib.Path
    pareto_png: pathlib.Path
    summary_md: pathlib.Path
    patterns: tuple[pathlib.Path, ...]  # per front member in rank order: its .yaml, then .safetensors
    front: tuple[FrozenTrial, ...]
    dominated: dict[int, list[str]]  # front trial number -> names of the references it dominates


def front_trials(trials: list[FrozenTrial], directions: Sequence[str] = R.DIRECTIONS) -> list[FrozenTrial]:
    """The Pareto front among ``comparable`` feasible trials, cheapest first (ties: more accurate
    first). A screened trial was judged off the front at its checkpoint.

    >>> from optuna.trial import create_trial
    >>> trials = [create_trial(values=v) for v in ([0.9, 1.0], [0.8, 0.3], [0.7, 0.5], [0.6, 0.2])]
    >>> trials.append(create_trial(values=[0.95, 0.1], constraints={"density": 0.2}))  # over budget
    >>> [t.values for t in front_trials(trials)]  # [0.7, 0.5] is dominated by [0.8, 0.3]
    [[0.6, 0.2], [0.8, 0.3], [0.9, 1.0]]
    """
    pool = [t for t in trials if comparable(t) and feasible(t)]
    front = [pool[i] for i in pareto_front([t.values for t in pool], directions)]
    return sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number))


def cost_range(trial: FrozenTrial) -> tuple[float, float] | None:
    """The middle half of the trial's repeated cost measurements (``patternc.Measurement``'s
    ``ratio_low``, ``ratio_high``, averaged over the layers), or None where it was not recorded
    (a reused score's source has it; studies before the spread was kept do not)."""
    cost = R.read(trial).cost
    if not isinstance(cost, dict) or "ratio_low" not in cost or "ratio_high" not in cost:
        return None
    return cost["ratio_low"], cost["ratio_high"]


def _cost(trial: FrozenTrial) -> float | None:
    if trial.values is not None:
        return trial.values[1]
    cost = R.read(trial).cost
    return cost.get("ratio") if isinstance(cost, dict) else None


def _ordered(names: list[str], first: tuple[str, ...] = ()) -> list[str]:
    """Distinct names, ``first`` ones in that order, then the rest as first seen (bucket names run in
    distance order, which sorting the strings would scramble)."""
    seen = dict.fromkeys(n for n in first if n in names)
    seen.update(dict.fromkeys(names))
    return list(seen)


def trial_rows(trials: list[FrozenTrial]) -> tuple[list[str], list[dict]]:
    """(columns, one dict per trial) for ``trials.csv``; columns depend only on the trials' keys.

    >>> from optuna.distributions import FloatDistribution
    >>> from optuna.trial import create_trial
    >>> trial = create_trial(values=[0.8, 0.3], user_attrs={"expression": "causal & window(ceil($w * n))"},
    ...                      params={"w": 0.1}, distributions={"w": FloatDistribution(0, 1)})
    >>> columns, rows = trial_rows([trial])
    >>> columns[:9]
    ['number', 'state', 'reference', 'status', 'expression', 'param_w', 'accuracy', 'fidelity', 'cost']
    >>> rows[0]["param_w"], rows[0]["accuracy"], rows[0]["fidelity"], rows[0]["feasible"], rows[0]["density"]
    (0.1, 0.8, 'full', True, '')
    """
    params = sorted({p for t in trials for p in t.params})
    constraints = sorted({c for t in trials for c in t.constraints})
    buckets = _ordered([b for t in trials for b in R.read(t).buckets or {}])
    stages = _ordered([s for t in trials for s in R.read(t).durations or {}], _STAGES)
    columns = (["number", "state", "reference", "status", "expression"]
               + [f"param_{p}" for p in params]
               + ["accuracy", "fidelity", "cost", "cost_low", "cost_high", "density", "mixing_depth",
                  "feasible"]
               + [f"constraint_{c}" for c in constraints] + ["rejected_reason"]
               + [f"bucket_{b}" for b in buckets] + [f"seconds_{s}" for s in stages]
               + ["worker", "datetime_start", "datetime_complete"])
    rows = []
    for t in trials:
        a = R.read(t)
        row = {"number": t.number, "state": t.state.name, "reference": a.reference,
               "status": a.status, "expression": a.expression,
               "accuracy": t.values[0] if t.values else a.accuracy, "fidelity": fidelity(t),
               "cost": _cost(t), "cost_low": (cost_range(t) or (None, None))[0],
               "cost_high": (cost_range(t) or (None, None))[1],
               "density": a.density, "mixing_depth": a.mixing_depth,
               "feasible": feasible(t), "rejected_reason": a.rejected,
               "worker": (a.worker or {}).get("index"),
               "datetime_start": t.datetime_start and t.datetime_start.isoformat(),
               "datetime_complete": t.datetime_complete and t.datetime_complete.isoformat()}
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row.update({f"constraint_{k}": v for k, v in t.constraints.items()})
        row.update({f"bucket_{k}": v for k, v in (a.buckets or {}).items()})
        row.update({f"seconds_{k}": v for k, v in (a.durations or {}).items()})
        rows.append({c: "" if row.get(c) is None else row[c] for c in columns})
    return columns, rows


def _write_csv(path: pathlib.Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _slug(text: str, limit: int = 40) -> str:
    """``causal & window(16)`` -> ``causal_window_16``: a file name that survives any filesystem."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit].rstrip("_") or "pattern"


def _pattern_files(trial: FrozenTrial, rank: str, study: str, space: SpaceConfig, task: str,
                   folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path] | None:
    """Write one front member's stack YAML and its compiled layout at target.n; None without a stack."""
    data = R.read(trial).stack
    if not isinstance(data, dict):
        return None
    acc, cost = trial.values
    # a sampled candidate's expression is the space's template (its values are in params): name it by
    # space and trial, which trials.csv and the study resolve
    name = R.read(trial).reference or f"{space.name}_trial{trial.number}"
    stem = f"{rank}_{_slug(name)}"
    density = R.read(trial).density
    description = (f"Pareto #{int(rank)} of study {study} (trial {trial.number}; space {space.name}, task "
                   f"{task}): accuracy {acc:.3f}, cost {cost:.2f}x dense causal at n={space.target.n}"
                   + ("" if density is None else f", block density {density:.3f}"))
    # The cost was measured on target.block tiles, so the file carries that block: loaded as is, it
    # compiles to the layout that was timed.
    stack = Stack.from_dict({**data, "block": space.target.block, "description": description})
    yaml_path, layout_path = folder / f"{stem}.yaml", folder / f"{stem}.safetensors"
    header = f"# Found by patternc-search; copy into conf/pattern/ to use it as pattern={stem}\n"
    yaml_path.write_text(header + yaml.safe_dump(stack.to_dict(), sort_keys=False, width=100),
                         encoding="utf-8")
    patternc.compile(stack, space.target.n, block=space.target.block).save(layout_path)
    return yaml_path, layout_path


def pareto_figure(trials: list[FrozenTrial], front: list[FrozenTrial], title: str) -> Figure:
    """Accuracy against measured cost: feasible trials grey, infeasible hollow, references labelled,
    trials stopped at the checkpoint as crosses (their accuracy is not a full budget's), the front
    as a step line (the best accuracy any budget up to that cost buys).

    >>> from optuna.trial import create_trial
    >>> trials = [create_trial(values=v) for v in ([0.9, 1.0], [0.8, 0.3], [0.6, 0.2])]
    >>> figure = pareto_figure(trials, front_trials(trials), "tpe")
    >>> [line.get_label() for line in figure.axes[0].get_lines()]
    ['Pareto front']
    >>> figure.savefig(tmp_path / "p.png")
    >>> (tmp_path / "p.png").read_bytes()[:4]
    b'\x89PNG'
    """
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    pts = [t for t in trials if scored(t)]
    groups = {  # (is a reference, is feasible) -> how it is drawn; hollow means infeasible
        (False, True): {"s": 18, "color": "0.6", "label": "sampled pattern"},
        (False, False): {"s": 30, "facecolors": "none", "edgecolors": "0.4", "label": "sampled, infeasible"},
        (True, True): {"s": 40, "marker": "D", "color": "C3", "label": "classic pattern"},
        (True, False): {"s": 40, "marker": "D", "facecolors": "none", "edgecolors": "C3",
                        "label": "classic, infeasible (over budget or no mixing)"},
    }
    for (ref, ok), style in groups.items():
        members = [t for t in pts if comparable(t) and bool(R.read(t).reference) == ref
                   and bool(feasible(t)) == ok]
        if members:
            ax.scatter([t.values[1] for t in members], [t.values[0] for t in members], zorder=2, **style)
    stopped = [t for t in pts if not comparable(t)]
    if stopped:
        ax.scatter([t.values[1] for t in stopped], [t.values[0] for t in stopped], zorder=2, s=24, marker="x",
                   color="0.6", label="stopped at the checkpoint (accuracy on part of the budget)")
    for t in pts:
        if R.read(t).reference:
            ax.annotate(R.read(t).reference, (t.values[1], t.values[0]), xytext=(5, -10),
                        textcoords="offset points", fontsize=8, color="C3")
    if front:
        xs, ys = [t.values[1] for t in front], [t.values[0] for t in front]
        ax.step(xs, ys, where="post", color="C0", marker="o", markersize=7, zorder=3, label="Pareto front",
                markerfacecolor="none", markeredgewidth=1.5)
        for rank, (x, y) in enumerate(zip(xs, ys, strict=True), 1):
            ax.annotate(f"#{rank}", (x, y), xytext=(-4, 6), textcoords="offset points", fontsize=8,
                        color="C0", ha="right")
    chance = next((R.read(t).chance for t in trials if R.read(t).chance is not None), None)
    if chance is not None:
        ax.axhline(chance, color="0.5", linestyle="--", linewidth=1, label=f"chance ({chance:.3g})")
    costs = [t.values[1] for t in pts]
    if costs and min(costs) > 0 and max(costs) / min(costs) > 10:
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    if not any(feasible(t) for t in pts):
        ax.text(0.5, 0.5, "no feasible trial", transform=ax.transAxes, ha="center", fontsize=14)
    ax.set_xlabel("measured cost (fraction of dense causal attention's time)")
    ax.set_ylabel("proxy accuracy (held out)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if pts or chance is not None:
        ax.legend(loc="best", fontsize=8)
    return fig


def _code(text, table: bool = False) -> str:
    """An expression as inline code; in a table cell a bare ``|`` would end the cell, so it is escaped
    there (GitHub's tables unescape it inside code) and only there (elsewhere it would show)."""
    text = str(text or "")
    return "`" + (text.replace("|", "\\|") if table else text) + "`"


def _who(t: FrozenTrial) -> str:
    return R.read(t).reference or f"trial {t.number}"


def _beats(front: list[FrozenTrial], dominated: dict[int, list[str]], refs: list[FrozenTrial]) -> list[str]:
    """One line per front member that dominates a classic pattern, or one line saying none does."""
    if not refs:
        return ["The study has no scored reference (classic) pattern to compare with."]
    by_name = {_who(t): t for t in refs}
    lines = []
    for rank, t in enumerate(front, 1):
        if dominated.get(t.number):
            beaten = ", ".join(f"{n} ({by_name[n].values[0]:.3f}, {by_name[n].values[1]:.2f}x)"
                               for n in dominated[t.number])
            lines.append(f"- #{rank} ({_who(t)}: {t.values[0]:.3f}, {t.values[1]:.2f}x) dominates {beaten}")
    return lines or [f"No front pattern dominates any of the {len(refs)} classic patterns off the front."]


def pareto_markdown(front: list[FrozenTrial], files: list[str], dominated: dict[int, list[str]],
                    refs: list[FrozenTrial], title: str) -> str:
    """``pareto.md``: the front as a table, cheapest first, then which classic patterns it beats."""
    head = [f"# Pareto front: {title}", ""]
    if not front:
        return "\n".join([*head, "No feasible trial has finished, so there is no Pareto front yet.", ""])
    rows = ["| rank | expression | accuracy | cost | density | mixing depth | pattern file |",
            "|---:|---|---:|---:|---:|---:|---|"]
    for rank, (t, name) in enumerate(zip(front, files, strict=True), 1):
        a = R.read(t)
        density = "" if a.density is None else f"{a.density:.3f}"
        depth = a.mixing_depth
        label = _code(a.expression, table=True)
        label += f" ({a.reference})" if a.reference else ""
        link = f"[{name}](patterns/{name})" if name else ""
        spread = cost_range(t)
        cost = f"{t.values[1]:.2f}x dense" + (f" [{spread[0]:.2f}-{spread[1]:.2f}]" if spread else "")
        rows.append(f"| {rank} | {label} | {t.values[0]:.3f} | {cost} | {density} | "
                    f"{'none' if depth is None else depth} | {link} |")
    return "\n".join([*head, *rows, "", *_within_spread(front), "Classic patterns dominated by the front:",
                      "", *_beats(front, dominated, refs), ""])


def _within_spread(front: list[FrozenTrial]) -> list[str]:
    """Neighbours on the front (cheapest first) whose cost ranges overlap: the measurement does not
    tell their costs apart, so their order by cost is not a finding."""
    ranges = [cost_range(t) for t in front]
    tied = [f"{rank} and {rank + 1}" for rank, (a, b) in enumerate(itertools.pairwise(ranges), 1)
            if a and b and a[0] <= b[1] and b[0] <= a[1]]
    if not tied:
        return []
    return [f"Costs within each other's spread (the middle half of their repeated measurements), so not "
            f"told apart by cost: ranks {', '.join(tied)}.", ""]


def _rejections(trials: list[FrozenTrial]) -> list[str]:
    """Rejected candidates grouped by reason (``rejection_reasons``), the three commonest shown."""
    rejected = [t for t in trials if R.read(t).status == "rejected"]
    if not rejected:
        return ["Rejected before training: none."]
    violated = collections.Counter(c for t in rejected for c, v in t.constraints.items() if v > 0)
    by_constraint = ", ".join(f"{c} {k}" for c, k in violated.most_common())
    violations = f" (constraints violated: {by_constraint})" if by_constraint else ""
    lines = [f"Rejected before training: {len(rejected)}{violations}; commonest reasons:"]
    for count, example, vary in rejection_reasons(rejected)[:3]:
        lines.append(f"  - {count} x {example}" + (" (numbers vary)" if vary else ""))
    return lines


def _describe(t: FrozenTrial) -> str:
    return (f"{_who(t)} {_code(R.read(t).expression)}: accuracy {t.values[0]:.3f}, "
            f"cost {t.values[1]:.2f}x dense")


def _kernel(trials: list[FrozenTrial]) -> str:
    """`` with reference (float32) on cpu``: how the first measured trial was timed, or nothing."""
    cost = next((R.read(t).cost for t in trials if isinstance(R.read(t).cost, dict)), None)
    if cost is None or "backend" not in cost:
        return ""
    where = f" on {cost['device']}" if cost.get("device") else ""
    return f" with {cost['backend']} ({cost.get('dtype', '?')}){where}"


def summary_markdown(study: str, space: SpaceConfig, task: str, trials: list[FrozenTrial],
                     front: list[FrozenTrial], dominated: dict[int, list[str]], refs: list[FrozenTrial],
                     tolerance: float = 0.02, account: Account | None = None) -> str:
    """``summary.md``: whether the study is finished, counts, rejections, the front, the best and the
    cheapest good-enough pattern, what beats the classics, and the time taken."""
    states = collections.Counter(t.state.name for t in trials)
    statuses = collections.Counter(str(R.read(t).status) for t in trials if R.read(t).status is not None)
    facts = ([f"Study {account.describe()}."] if account is not None else []) + [
             f"Trials: {len(trials)}" + (" (" + ", ".join(f"{s} {k}" for s, k in sorted(states.items())) + ")"
                                         if trials else ""),
             "Status: " + (", ".join(f"{s} {k}" for s, k in sorted(statuses.items())) or "none recorded"),
             *_rejections(trials)]
    pool = [t for t in trials if comparable(t)]
    good = [t for t in pool if feasible(t)]
    stopped = sum(fidelity(t) == "checkpoint" for t in trials)
    if stopped:
        facts.append(f"Stopped at a screening rung (task.train.rungs): {stopped} trial{'s' * (stopped > 1)}, "
                     "scored on part of the budget and compared with no fully trained one (the fidelity "
                     "column of trials.csv).")
    beats = []
    if not good:
        facts.append("No feasible trial has finished" + (" its full training" if stopped else "")
                     + ": no Pareto front, no pattern files.")
    else:
        best = max(pool, key=lambda t: (t.values[0], -t.values[1]))  # infeasible references count: dense
        near = [t for t in good if t.values[0] >= best.values[0] - tolerance]
        facts += [f"Pareto front: {len(front)} patterns (see pareto.md, pareto.png, patterns/).",
                  f"Best accuracy: {_describe(best)}" + ("" if feasible(best) else " (infeasible)") + ".",
                  f"Best feasible accuracy: {_describe(max(good, key=lambda t: t.values[0]))}.",
                  f"Cheapest feasible within {tolerance} of the best accuracy: "
                  + (f"{_describe(min(near, key=lambda t: t.values[1]))}." if near else "none.")]
        beats = ["", "Classic patterns dominated by the front:", "", *_beats(front, dominated, refs)]
    times = [t.datetime_start for t in trials if t.datetime_start] + [
        t.datetime_complete for t in trials if t.datetime_complete]
    if times:
        facts.append(f"Elapsed: {(max(times) - min(times)).total_seconds():.1f} s from the first trial's "
                     "start to the last one's end.")
    return "\n".join([
        f"# Search summary: space {space.name}, task {task}, study {study}", "",
        f"Cost is measured{_kernel(trials)} at target.n={space.target.n} on {space.target.block}-token "
        "blocks, as a fraction of dense causal attention's time; accuracy is held-out proxy accuracy, "
        "the mean over the task's difficulty buckets.", "",
        # each fact a bullet, so that it renders on its own line; the reasons are already sub-bullets
        *(fact if fact.startswith("  ") else f"- {fact}" for fact in facts), *beats, ""])


def write_report(study: optuna.Study, space: SpaceConfig, out_dir: pathlib.Path, task_name: str,
                 account: Account | None = None) -> Report:
    """Write every output of a search run into ``out_dir`` and return where, with the front;
    ``account`` (``search.accounting``) puts whether the study is finished at the top of the summary.

    >>> from optuna.trial import create_trial
    >>> study = optuna.create_study(directions=["maximize", "minimize"])  # accuracy, cost
    >>> study.add_trial(create_trial(values=[0.8, 0.3], user_attrs={"expression": "causal & window(64)"}))
    >>> report = write_report(study, SpaceConfig(name="window"), tmp_path, "mqar")
    >>> sorted(p.name for p in tmp_path.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['explorer', 'pareto.csv', 'pareto.md', 'pareto.png', 'patterns', 'report.html', 'summary.md',
     'trials.csv']
    >>> write_report(optuna.create_study(), SpaceConfig(), tmp_path, "mqar")
    Traceback (most recent call last):
      ...
    ValueError: a search study has directions ('maximize', 'minimize') (accuracy, cost), got ('minimize',)
    """
    directions = tuple(d.name.lower() for d in study.directions)
    if directions != R.DIRECTIONS:
        raise ValueError(f"a search study has directions {R.DIRECTIONS} (accuracy, cost), got {directions}")
    out_dir = pathlib.Path(out_dir)
    (out_dir / "patterns").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "patterns").glob("[0-9]*_*"):  # an earlier report here: its ranks are stale
        if old.suffix in (".yaml", ".safetensors"):
            old.unlink()
    trials = study.get_trials(deepcopy=False)
    front = front_trials(trials, directions)
    on_front = {t.number for t in front}
    refs = [t for t in trials if comparable(t) and R.read(t).reference and t.number not in on_front]
    dominated: dict[int, list[str]] = collections.defaultdict(list)
    for i, j in dominated_pairs([t.values for t in front], [t.values for t in refs], directions):
        dominated[front[i].number].append(R.read(refs[j]).reference)

    columns, rows = trial_rows(trials)  # first, so the raw data is on disk whatever follows
    paths = {name: out_dir / name for name in ("trials.csv", "pareto.csv", "pareto.md", "pareto.png",
                                                "summary.md")}
    _write_csv(paths["trials.csv"], columns, rows)

    width = max(2, len(str(len(front))))
    files = [_pattern_files(t, f"{rank:0{width}d}", study.study_name, space, task_name, out_dir / "patterns")
             for rank, t in enumerate(front, 1)]
    names = [f.name if f else "" for f in (pair[0] if pair else None for pair in files)]
    by_number = {r["number"]: r for r in rows}
    front_columns = ["rank", *columns[:5], "accuracy", "cost", "density", "mixing_depth", "yaml",
                     "safetensors", "dominates"]
    _write_csv(paths["pareto.csv"], front_columns, [
        {**{c: by_number[t.number][c] for c in front_columns[1:-3]}, "rank": rank, "yaml": name,
         "safetensors": pair[1].name if pair else "", "dominates": ";".join(dominated.get(t.number, []))}
        for rank, (t, name, pair) in enumerate(zip(front, names, files, strict=True), 1)])

    title = f"{space.name} on {task_name}: accuracy vs measured cost at target.n={space.target.n}"
    paths["pareto.md"].write_text(pareto_markdown(front, names, dominated, refs, title), encoding="utf-8")
    pareto_figure(trials, front, title).savefig(paths["pareto.png"], dpi=120)
    write_report_html(out_dir, trials, front, files, space, task_name, title)  # report.html, explorer/
    summary = summary_markdown(study.study_name, space, task_name, trials, front, dominated, refs,
                               account=account)
    paths["summary.md"].write_text(summary, encoding="utf-8")
    return Report(out_dir, *paths.values(), tuple(p for pair in files if pair for p in pair), tuple(front),
                  dict(dominated))
