"""``report.html`` in Debian's Chromium: hovering a point shows its pattern, parameters, accuracy
per bucket and cost; clicking a front pattern opens its explorer page; the trials sort by column;
the rejections show their reasons. No console error, no request."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import CHROMIUM, OUT, Opened, chromium
from tests.test_explore_report import run  # noqa: F401  (the fixture: a report of a synthetic study)

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: "
                    "pip install -e '.[test,browser]' -c constraints.txt")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with chromium() as context:
        yield context


def open_report(browser, folder: Path) -> Opened:
    """Like ``Opened``, but report.html has no explorer API: it is ready once its plot is drawn."""
    opened = Opened.__new__(Opened)
    opened.page = browser.new_page()
    opened.problems = []
    opened.page.on("console", lambda m: opened.problems.append(m.text) if m.type in ("error", "warning")
                   else None)
    opened.page.on("pageerror", lambda e: opened.problems.append(str(e)))
    opened.page.on("request", lambda r: None if r.url.startswith("file:") else opened.problems.append(r.url))
    opened.page.goto((folder / "report.html").as_uri())
    opened.page.wait_for_selector("#plot .pt")
    return opened


def test_hover_and_click_a_front_pattern(browser, run):  # noqa: F811
    opened = open_report(browser, run)
    point = opened.page.locator("#plot .pt[data-number='3']")
    point.hover()
    tip = opened.page.locator("#tip")
    text = tip.inner_text()
    assert tip.get_attribute("data-number") == "3"
    for part in ("trial 3 (Pareto #3)", "causal & (window(64) | global(32))", "$w = 64.0000, $g = 32.0000",
                 "accuracy 0.850, cost 0.35x dense causal", "d48-128: 0.425", "click: open in the explorer"):
        assert part in text, part
    OUT.mkdir(parents=True, exist_ok=True)
    opened.page.screenshot(path=OUT / "search_report.png", full_page=True)
    point.click()
    opened.page.wait_for_function("window.patterncExplorer !== undefined")
    assert opened.page.url.endswith("/explorer/03_window_global_trial3.html")
    assert opened.page.evaluate("window.patterncExplorer.ready") > 0
    assert opened.page.locator("#expression").inner_text() == "causal & (window(64) | global(32))"
    assert opened.problems == []


def test_trials_sort_and_rejections_show_their_reasons(browser, run):  # noqa: F811
    opened = open_report(browser, run)
    order = lambda: [int(x) for x in opened.page.locator("#trials tbody tr").evaluate_all(  # noqa: E731
        "rows => rows.map(r => r.dataset.number)")]
    assert order() == list(range(12))
    opened.page.click("#trials th[data-key=accuracy]")
    assert order()[:7] == [4, 1, 5, 2, 3, 6, 0]  # ascending accuracy, unscored trials last
    opened.page.click("#trials th[data-key=accuracy]")
    assert order()[:3] == [0, 6, 3]
    reasons = opened.page.locator("#rejected tbody tr").all_inner_texts()
    assert len(reasons) == 3
    assert "density 0.60 exceeds the budget 0.50" in reasons[0]
    assert "does not mix within 2 layers at n=128" in reasons[2]
    assert opened.problems == []
