"""``report.html``: the search run as one self-contained page beside ``pareto.png``.

An interactive Pareto plot (hover a point: its pattern, parameters, accuracy per bucket and cost;
click a front pattern: its explorer page), every trial in a table sorted by any column, and the
rejected candidates with their reasons. Each front pattern's explorer page is written at
``target.n`` under ``explorer/``, named as its YAML under ``patterns/``.

>>> import json
>>> import optuna
>>> from optuna.trial import create_trial
>>> study = optuna.create_study(directions=["maximize", "minimize"])  # accuracy, cost
>>> study.add_trials([create_trial(values=[0.9, 1.0], user_attrs={"reference": "dense_causal"}),
...                   create_trial(values=[0.8, 0.3], user_attrs={"expression": "causal & window(64)"})])
>>> front = study.trials[::-1]  # cheapest first, as search.report.front_trials gives it
>>> page = write_report_html(tmp_path, study.trials, front, [None, None], SpaceConfig(name="window"),
...                          "mqar", "window on mqar")  # no pattern files: no explorer pages
>>> text = page.read_text(encoding="utf-8")
>>> data = json.loads(text.split('id="report-data">')[1].split("</script>")[0])  # what the page draws
>>> [(t["number"], t["reference"], t["front"]) for t in data["trials"]]
[(0, 'dense_causal', 2), (1, None, 1)]
"""

from __future__ import annotations

import html
import json
import pathlib
from importlib.resources import files

from optuna.trial import FrozenTrial

import patternc
from patternc.explore import fill_template, write_explorer, write_page
from search import record as R
from search.config import SpaceConfig
from search.record import feasible, fidelity

__all__ = ["write_report_html"]


def _point(t: FrozenTrial, page: str | None, front_rank: int | None) -> dict:
    a = R.read(t)
    values = t.values or [a.accuracy, (a.cost or {}).get("ratio")]
    return {"number": t.number, "state": t.state.name, "reference": a.reference,
            "status": a.status, "expression": a.expression, "params": dict(t.params),
            "accuracy": values[0], "fidelity": fidelity(t), "cost": values[1], "density": a.density,
            "mixing_depth": a.mixing_depth, "buckets": a.buckets or {},
            "feasible": feasible(t), "rejected": a.rejected, "front": front_rank, "page": page}


def _explorer_pages(out_dir: pathlib.Path, pattern_files: list, space: SpaceConfig) -> list[str | None]:
    """Each front member's explorer page at target.n, from its pattern file; relative links."""
    folder = out_dir / "explorer"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("[0-9]*_*.html"):  # an earlier report's ranks are stale
        old.unlink()
    links = []
    for pair in pattern_files:
        if not pair:
            links.append(None)
            continue
        yaml_path = pair[0]
        cp = patternc.compile(yaml_path, space.target.n)
        write_explorer(cp, folder / f"{yaml_path.stem}.html", title=f"{yaml_path.stem} at target.n")
        links.append(f"explorer/{yaml_path.stem}.html")
    return links


def write_report_html(out_dir: pathlib.Path, trials: list[FrozenTrial], front: list[FrozenTrial],
                      pattern_files: list, space: SpaceConfig, task: str, title: str) -> pathlib.Path:
    """Write ``report.html`` (and the front's explorer pages); ``pattern_files`` holds, per front
    member in rank order, its (yaml, safetensors) paths or None, as ``write_report`` made them.
    The page is in search/static/report.html (package data)."""
    links = _explorer_pages(out_dir, pattern_files, space)
    rank = {t.number: r for r, t in enumerate(front, 1)}
    page = {t.number: link for t, link in zip(front, links, strict=True)}
    points = [_point(t, page.get(t.number), rank.get(t.number)) for t in trials]
    data = {"title": title, "task": task, "space": space.name, "n_target": space.target.n,
            "trials": points}
    template = (files("search") / "static" / "report.html").read_text(encoding="utf-8")
    text = fill_template(template, {"TITLE": html.escape(title),
                                    "DATA": json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")})
    return write_page(out_dir / "report.html", text)
