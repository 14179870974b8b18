"""``report.html`` beside ``pareto.png``: the data it holds, the front's explorer pages it links,
and, in Debian's Chromium, the plot's hover and click, the sortable trials and the rejections."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from search.report import write_report
from tests.explore_pages import page_json
from tests.test_report import FRONT, SPACE, TRIALS, _study


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    write_report(_study(*TRIALS), SPACE, out, "mqar")
    return out


def report_json(path: Path) -> dict:
    text = path.read_text()
    body = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S).group(1)
    return json.loads(body)


def test_report_html_holds_every_trial(run):
    data = report_json(run / "report.html")
    trials = {t["number"]: t for t in data["trials"]}
    assert sorted(trials) == list(range(len(TRIALS)))
    assert [n for n, t in sorted(trials.items()) if t["front"]] == sorted(FRONT)
    assert [trials[n]["front"] for n in FRONT] == [1, 2, 3, 4]  # ranked by cost
    three = trials[3]
    assert (three["expression"], three["params"], three["accuracy"], three["cost"]) == (
        "causal & (window(64) | global(32))", {"w": 64, "g": 32}, 0.85, 0.35)
    assert three["buckets"] == {"d2-16": 1.0, "d16-48": 0.85, "d48-128": 0.425}
    assert trials[9]["rejected"] == "does not mix within 2 layers at n=128"
    assert trials[0]["feasible"] is False and trials[0]["reference"] == "dense_causal"


def test_each_front_pattern_has_an_explorer_page(run):
    data = report_json(run / "report.html")
    for t in data["trials"]:
        if not t["front"]:
            assert t["page"] is None
            continue
        page = run / t["page"]
        yaml_name = Path(t["page"]).with_suffix(".yaml").name
        assert (run / "patterns" / yaml_name).exists()  # named as the pattern file it shows
        explorer = page_json(page.read_text())
        assert explorer["n"] == SPACE.target.n and explorer["expressions"] == [t["expression"]]


def test_a_second_report_replaces_the_stale_pages(run):
    (run / "explorer" / "09_stale.html").write_text("old")
    write_report(_study(*TRIALS), SPACE, run, "mqar")
    assert sorted(p.name for p in (run / "explorer").iterdir()) == sorted(
        Path(t["page"]).name for t in report_json(run / "report.html")["trials"] if t["page"])
