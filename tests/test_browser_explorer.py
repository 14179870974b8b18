"""The explorer in a real browser: Debian's Chromium (/usr/bin/chromium), driven by Playwright.

Each page is opened from a file with the network off, as a reader would open one that was mailed
to them: it must load without a console error, draw more pixels for dense attention than for the
pattern, describe hovered cells exactly (ranges, kind, the terms that allow them), follow the
navigator, and evaluate the token predicate exactly as the compiler does, for every primitive.
Screenshots and the time each shipped stack's page takes to open go to outputs/browser/.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import patternc
from patternc import Override, Stack
from patternc.explore import write_explorer
from tests.browser import CHROMIUM, OUT, Opened, chromium
from tests.explore_pages import STACKS, built_page

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: "
                               "pip install -e '.[test,browser]' -c constraints.txt")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
LONGFORMER = ROOT / "conf" / "pattern" / "longformer.yaml"


@pytest.fixture(scope="module")
def browser():
    with chromium() as context:
        yield context


@pytest.fixture(scope="module")
def longformer_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("pages") / "longformer.html"
    write_explorer(patternc.compile(LONGFORMER, n=4096), path)
    return path


def test_the_page_loads_without_a_console_error(browser, longformer_page):
    opened = Opened(browser, longformer_page)
    assert opened.problems == []
    assert opened.page.locator("#expression").inner_text() == "causal & (window(256) | global(16))"
    assert opened.eval("document.getElementById('canvas').dataset.mode") == "blocks"
    OUT.mkdir(parents=True, exist_ok=True)
    opened.page.screenshot(path=OUT / "longformer_4096.png", full_page=True)


def test_dense_attention_draws_more_than_the_pattern(browser, longformer_page):
    opened = Opened(browser, longformer_page)
    pattern = opened.painted()
    opened.page.click("#toggle button[data-dense=true]")
    opened.page.wait_for_function("document.getElementById('canvas').dataset.dense === 'true'")
    dense = opened.painted()
    assert 0 < pattern < dense
    assert dense > 0.45 * 640 * 640  # the lower triangle, every block of it
    opened.page.click("#toggle button[data-dense=false]")
    opened.page.wait_for_function("document.getElementById('canvas').dataset.dense === 'false'")
    assert opened.painted() == pattern
    assert "pairs scored" in opened.page.locator("#count-dense").inner_text()


def test_hovering_blocks_and_tokens_names_the_terms(browser, longformer_page):
    opened = Opened(browser, longformer_page)
    block = opened.hover_token(300, 5)  # whole sequence: one cell per block; block (2, 0)
    assert block["range"] == "queries 256..383, keys 0..127"
    assert block["kind"] == "PARTIAL" and block["terms"] == "window(256)|global(16)"
    assert "block (2, 0) is PARTIAL" in block["text"]
    far = opened.hover_token(3000, 300)
    assert (far["kind"], far["terms"]) == ("empty", "")
    opened.eval("window.patterncExplorer.setView({q0: 256, k0: 0, span: 128})")  # tokens
    assert opened.eval("document.getElementById('canvas').dataset.mode") == "tokens"
    cases = {(300, 5): "global(16)", (300, 20): "", (310, 60): "window(256)",
             (270, 15): "window(256)|global(16)"}
    for (q, k), terms in cases.items():
        found = opened.hover_token(q, k)
        assert found["range"] == f"query {q}, key {k}"
        assert found["terms"] == terms, (q, k)
        assert ("is allowed" in found["text"]) == bool(terms)
    dense_view = opened.eval("window.patterncExplorer.setDense(true)")
    assert dense_view is None
    assert "dense attention scores 1 of these 1 pairs" in opened.hover_token(300, 20)["text"]
    assert opened.problems == []


def test_navigation_changes_layer_and_head(browser, longformer_page):
    opened = Opened(browser, longformer_page)
    opened.page.click("#layer-next")
    assert opened.page.locator("#layer").input_value() == "1"
    opened.page.click("#head-grid .cell[data-layer='6'][data-head='1']")
    chosen = [opened.page.locator(f"#{what}").input_value() for what in ("layer", "head")]
    assert chosen == ["6", "1"]
    assert opened.page.locator("#expression").inner_text() == "causal & (dilated(256, 2) | global(16))"
    assert opened.eval("[window.patterncExplorer.state.layer, window.patterncExplorer.state.head]") == [6, 1]
    opened.eval("window.patterncExplorer.setView({q0: 256, k0: 256, span: 64})")
    assert opened.hover_token(300, 298)["terms"] == "dilated(256, 2)"
    assert opened.hover_token(300, 299)["terms"] == ""  # an odd offset: dilation 2 skips it
    opened.page.click("#head-prev")
    assert opened.page.locator("#head").input_value() == "0"
    assert opened.problems == []


def test_the_receptive_field_steps_through_the_layers(browser, longformer_page):
    opened = Opened(browser, longformer_page)
    spread = opened.eval("window.patterncExplorer.data.spread")
    index = spread["keys"].index(2048)  # one of the 63 evenly spaced keys
    texts = []
    for upto in (0, 1, 12):
        opened.eval(f"window.patterncExplorer.setGrowth({index}, {upto})")
        texts.append(opened.page.locator("#growth-text").inner_text())
    report = patternc.reach(patternc.compile(LONGFORMER, n=4096), keys=[2048])
    heard = [report.spread.tokens(t)[report.spread.keys.index(2048)][0] for t in (0, 1, 12)]
    assert heard == [1, 256, 2048]  # the window carries it 255 tokens a layer, to the end by layer 8
    for text, count in zip(texts, heard, strict=True):
        assert f"heard by {count:,} of the 2,048 tokens" in text


# A table of expressions touching every primitive and combinator, on short lengths with small
# blocks (so blocks of every kind occur and random() draws several).
ORACLE = [
    "all", "none", "causal", "window(5)", "band(-3, 7)", "dilated(4, 3)", "stride(7)", "fixed(16, 3)",
    "chunk(12)", "sink(5)", "global(6)", "tokens([3, 40, 77])", "columns([0, 31, 32])",
    "diagonals([-9, 0, 13])", "prefix(20)", "random(2, seed=5)", "neighborhood([9, 10], [3, 4])",
    "neighborhood([2, 4, 11], [2, 3, 5])", "causal & documents([7, 30, 31, 64])",
    "causal & (window(9) | sink(2) | stride(11))",
    "~(window(4) | global(3)) - diagonals([2])", "(chunk(10) & causal) | (columns([50]) - prefix(60))",
]


def test_the_page_predicate_is_the_compilers(browser, tmp_path):
    """One head per expression of ORACLE; every pair of every head, against the dense mask."""
    overrides = tuple(Override(expr, None, (h, h + 1)) for h, expr in enumerate(ORACLE))
    cp = patternc.compile(Stack(ORACLE[0], heads=len(ORACLE), overrides=overrides), n=90, block=(8, 16))
    path = tmp_path / "page.html"
    write_explorer(cp, path)
    opened = Opened(browser, path)
    pairs = [[q, k] for q in range(90) for k in range(90)]
    for head, expr in enumerate(ORACLE):
        got = opened.eval(f"(pairs) => window.patterncExplorer.allowed(0, {head}, pairs)", pairs)
        assert np.array_equal(np.array(got).reshape(90, 90), cp.to_dense(0, head)), expr
    assert opened.problems == []


@pytest.mark.parametrize("n", [4096, 1_048_576])
@pytest.mark.parametrize("stack", STACKS, ids=[s.stem for s in STACKS])
def test_every_stack_opens(browser, stack, n):
    opened = Opened(browser, built_page(stack, n))
    assert opened.problems == []
    assert opened.eval("document.getElementById('canvas').dataset.mode") in ("blocks", "overview")
    assert opened.painted() > 0
    assert opened.hover_at(*_canvas_point(opened, 0.7, 0.2))["range"].startswith("queries ")
    OUT.mkdir(parents=True, exist_ok=True)
    opened.page.screenshot(path=OUT / f"{stack.stem}_{n}.png")
    times = OUT / "open_times.json"  # read by benchmarks/explorer_open.py; no timing is asserted here
    record = json.loads(times.read_text()) if times.exists() else {}
    record[f"{stack.stem} n={n}"] = {"open_seconds": round(opened.open_seconds, 3),
                                     "script_ms": round(opened.script_ms, 1),
                                     "bytes": built_page(stack, n).stat().st_size}
    times.write_text(json.dumps(record, indent=1, sort_keys=True))


def _canvas_point(opened: Opened, fx: float, fy: float) -> tuple[float, float]:
    box = opened.page.locator("#canvas").bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]
