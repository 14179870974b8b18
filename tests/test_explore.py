"""The explorer page's data, checked against the compiler and brute force: terms, runs, overview
cells and their term bits, the comparison table, the global-token check, sizes at large n, and
`patternc show --html` as a user runs it (bad paths included). The page's scripts are exercised in
a real browser by tests/test_browser_explorer.py."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import patternc
from patternc import Override, Stack
from patternc.cli import main
from patternc.draw import cell_counts
from patternc.explore import PAGE_LIMIT, explorer_html, model, page_data, write_explorer, write_page
from patternc.explore.compare import global_key
from patternc.explore.encode import unpacked
from patternc.explore.evaluator import RECORDS, predicate_tree
from patternc.explore.terms import head_terms
from patternc.lower.node import Lowered
from tests.explore_pages import STACKS, built_page, page_json

ROOT = Path(__file__).resolve().parent.parent


# ---- terms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, labels, texts", [
    pytest.param("causal & (window(256) | global(16))", ["window(256)", "global(16)"],
                 ["causal & window(256)", "causal & global(16)"], id="longformer"),
    pytest.param("(window(4) | sink(2)) & causal", ["window(4)", "sink(2)"],
                 ["window(4) & causal", "sink(2) & causal"], id="union_on_the_left"),
    pytest.param("window(4) | (sink(2) | stride(5))", ["window(4)", "sink(2)", "stride(5)"],
                 ["window(4)", "sink(2)", "stride(5)"], id="nested_unions"),
    pytest.param("(window(4) | sink(2)) - diagonals([1])", ["window(4)", "sink(2)"],
                 ["window(4) - diagonals([1])", "sink(2) - diagonals([1])"], id="difference"),
    pytest.param("(window(4) | sink(2)) & (causal | chunk(8))",
                 ["(window(4) | sink(2)) & (causal | chunk(8))"],
                 ["(window(4) | sink(2)) & (causal | chunk(8))"], id="unions_both_sides_stay_whole"),
    pytest.param("~window(4)", ["~window(4)"], ["~window(4)"], id="complement"),
])
def test_terms_split_the_top_level_union(expr, labels, texts):
    cp = patternc.compile(expr, n=64, block=8)
    terms = head_terms(cp, 0, 0)
    assert [t.label for t in terms] == labels
    assert [t.text for t in terms] == texts
    q, k = np.arange(64)[:, None], np.arange(64)[None, :]
    union = np.zeros((64, 64), bool)
    for t in terms:
        union |= np.broadcast_to(t.node.predicate(q, k), (64, 64))
    assert np.array_equal(union, cp.to_dense(0, 0))  # the terms allow exactly the head's pairs


def test_terms_are_lowered_at_their_layer_and_head():
    stack = Stack("causal & (window(4 * (h + 1)) | random(1, seed=3))", layers=2, heads=2)
    cp = patternc.compile(stack, n=64, block=8)
    terms = head_terms(cp, 1, 1)
    assert terms[0].node.hi == 7  # window(8) at head 1
    assert np.array_equal(terms[1].node.predicate(np.arange(64)[:, None], np.arange(64)[None, :])
                          | terms[0].node.predicate(np.arange(64)[:, None], np.arange(64)[None, :]),
                          cp.to_dense(1, 1))


def test_too_many_terms_are_merged_into_one():
    expr = " | ".join(f"diagonals([{d}])" for d in range(20))
    terms = head_terms(patternc.compile(expr, n=64, block=8), 0, 0)
    assert len(terms) == 16 and terms[-1].label == "other terms"
    assert terms[-1].text == " | ".join(f"diagonals([{d}])" for d in range(15, 20))


# ---- the page's predicate records ----------------------------------------------------------------


def _concrete(cls: type) -> list[type]:
    """Concrete subclasses, as their modules name them (dataclass(slots=True) leaves the class it
    replaced among the subclasses)."""
    found = []
    for sub in cls.__subclasses__():
        found += _concrete(sub)
        named = getattr(sys.modules[sub.__module__], sub.__name__, None) is sub
        if named and not getattr(sub, "__abstractmethods__", None):
            found.append(sub)
    return found


def test_every_lowered_type_has_a_page_record():
    """A new primitive needs a record here and a case in allowedBy() (static/arrays.js)."""
    missing = [cls.__name__ for cls in _concrete(Lowered) if cls not in RECORDS]
    assert not missing
    script = (ROOT / "patternc" / "explore" / "static" / "arrays.js").read_text()
    for cls in RECORDS:
        tree = predicate_tree(_example(cls))
        assert f'case "{tree["op"]}"' in script, f"allowedBy() has no case for {tree['op']}"


def _example(cls: type) -> Lowered:
    examples = {expr: patternc.compile(expr, n=64, block=8).node() for expr in (
        "all", "none", "causal", "stride(5)", "dilated(3, 2)", "diagonals([1, 3])", "chunk(8)", "sink(2)",
        "global(2)", "prefix(9)", "tokens([3])", "columns([4])", "fixed(8, 2)", "random(1, seed=1)",
        "window(2) | sink(1)", "window(9) & stride(2)", "window(9) - sink(1)", "~stride(3)",
        "neighborhood([4, 8], [3, 3])", "documents([5, 40])")}
    nodes = []
    for node in examples.values():
        stack = [node]
        while stack:
            x = stack.pop()
            nodes.append(x)
            stack += [getattr(x, f) for f in ("left", "right", "operand") if hasattr(x, f)]
    return next(x for x in nodes if type(x) is cls)


# ---- what the page holds -------------------------------------------------------------------------


def _kinds_from_runs(runs: dict, nbq: int, nbk: int) -> np.ndarray:
    row_ptr, col, length, kind = (unpacked(runs[key]) for key in ("row_ptr", "col", "length", "kind"))
    out = np.zeros((nbq, nbk), np.int8)
    for i in range(nbq):
        for r in range(row_ptr[i], row_ptr[i + 1]):
            out[i, col[r] : col[r] + length[r]] = kind[r]
    return out


@pytest.mark.parametrize("spec", ["conf/pattern/bigbird.yaml", "conf/pattern/longformer.yaml",
                                  "conf/pattern/minference_vertical_slash.yaml"])
def test_runs_and_overviews_hold_the_layout(spec):
    cp = patternc.compile(ROOT / spec, n=1000)  # the last block is short
    data = page_data(cp)
    grid = cp.grid
    stats = cp.stats().per_head
    for entry in data["layouts"]:
        l, h = entry["first"]
        layout = cp.layout(l, h)
        want = np.zeros((grid.nbq, grid.nbk), np.int8)
        want[layout.rows(), layout.indices] = np.where(layout.full, 2, 1)
        assert np.array_equal(_kinds_from_runs(entry["detail"]["runs"], grid.nbq, grid.nbk), want)
        o = entry["overview"]
        full, stored, _, spans = cell_counts(layout, data["overview_cells"])
        assert (o["ci"], o["cj"]) == spans
        assert np.array_equal(unpacked(o["stored"]), stored) and np.array_equal(unpacked(o["full"]), full)
        assert entry["stats"] == stats[l * cp.heads + h].to_dict()


def test_term_bits_say_which_terms_allow_pairs_in_a_cell():
    cp = patternc.compile("causal & (window(20) | sink(3) | columns([50]))", n=256, block=16)
    data = page_data(cp)
    (entry,) = data["layouts"]
    bits = unpacked(entry["overview"]["terms"])  # one cell per block here: 16 x 16
    q, k = np.arange(256)[:, None], np.arange(256)[None, :]
    for t, term in enumerate(head_terms(cp, 0, 0)):
        allowed = np.broadcast_to(term.node.predicate(q, k), (256, 256))
        allowed = allowed.reshape(16, 16, 16, 16).any(axis=(1, 3))
        assert np.array_equal((bits >> t) & 1 == 1, allowed), term.label


def test_spread_counts_match_reach():
    cp = patternc.compile(Stack("causal & window(16)", layers=3), n=512, block=32)
    spread = page_data(cp)["spread"]
    report = patternc.reach(cp, keys=spread["keys"])
    assert spread["exact"] and spread["tokens"] == [report.spread.tokens(t) for t in range(4)]
    certain = unpacked(spread["certain"])  # (layers + 1, keys, cells)
    assert certain.shape == (4, len(spread["keys"]), 512)
    for s, key in enumerate(spread["keys"]):
        for t in range(4):
            heard = report.spread.reached(t, s)[0]
            assert np.array_equal(certain[t, s] > 0, heard) and (certain[t, s][heard] == 255).all()
            assert heard.sum() == min(key + 15 * t, 511) - key + 1


def test_budgets_keep_the_opening_head_first(monkeypatch):
    cp = patternc.compile(ROOT / "conf/pattern/bigbird.yaml", n=1024)  # 144 distinct heads
    one = len(json.dumps(model._Head(cp, 5, 3).detail(), separators=(",", ":")))
    monkeypatch.setattr(model, "DETAIL_BUDGET", int(1.5 * one))
    monkeypatch.setattr(model, "OVERVIEW_BUDGET", 144 * 400)  # 144 heads: about 455 bytes each at 16 cells
    monkeypatch.setattr(model, "MIN_OVERVIEW_CELLS", 4)
    data = page_data(cp, layer=5, head=3)
    chosen = data["head_layout"][5][3]
    kept = [i for i, entry in enumerate(data["layouts"]) if entry["detail"]]
    assert kept == [chosen]  # the head the page opens on, before any other
    assert data["overview_cells"] < 16  # overviews halved their cells to fit
    assert all(entry["overview"] is not None for entry in data["layouts"])
    assert len(json.dumps([e["overview"] for e in data["layouts"]], separators=(",", ":"))) < 144 * 400


# ---- the comparison ------------------------------------------------------------------------------


def _global_oracle(cp: patternc.CompiledPattern, layer: int, head: int) -> int | None:
    dense = cp.to_dense(layer, head)
    n = cp.n
    for k in range(n):
        others = np.arange(k + 1 if cp.causal else 0, n)
        others = others[others != k]
        if dense[others, k].all():
            return k
    return None


@pytest.mark.parametrize("expr", [
    "causal & window(8)", "causal & (window(8) | sink(2))", "causal & fixed(16, 3)",
    "causal & (window(4) | columns([37]))", "band(-3, 3) | global(2)", "causal & (stride(9) | window(3))",
    "~diagonals([0]) & causal", "chunk(16)"])
def test_global_key_matches_brute_force(expr):
    cp = patternc.compile(expr, n=128, block=16)
    assert global_key(cp.node(), cp.layout(), cp.causal) == _global_oracle(cp, 0, 0)


def test_comparison_rows():
    cp = patternc.compile(Stack("causal & (window(64) | sink(4))", layers=2, heads=4), n=1024)
    report = patternc.reach(cp)
    rows = {r.name: r for r in model.comparison_rows(cp, report, cp.stats())}
    assert set(rows) == {"MHA (dense)", "MQA (dense, 1 KV head)", "GQA (dense)", "this pattern"}
    dense = 2 * 4 * 1024 * 1025 // 2
    assert all(rows[name].pairs == dense for name in rows if "dense" in name)
    assert rows["MHA (dense)"].computed_pairs == 2 * 4 * sum(128 * 128 * (i + 1) for i in range(8))
    kv = [rows[name].kv_heads for name in ("MHA (dense)", "MQA (dense, 1 KV head)", "GQA (dense)")]
    assert kv == [4, 1, None]  # None: the page's GQA setting
    mine = rows["this pattern"]
    assert mine.pairs == sum(s.allowed_pairs for s in cp.stats().per_head)
    assert mine.computed_pairs == sum(s.stored_pairs for s in cp.stats().per_head)
    assert mine.kv_keys == 68  # a window of 64 and 4 sinks (patternc.kv)
    assert report.exact and report.mixing_depth is None and mine.layers_to_mix == "more than 8"
    assert mine.global_token.startswith("yes: key 0")


# ---- the page as a file --------------------------------------------------------------------------


def test_the_page_is_self_contained():
    text = explorer_html(patternc.compile(ROOT / "conf/pattern/longformer.yaml", n=1024))
    assert not re.search(r"""(src|href)\s*=|https?://|<link|@import|fetch\(|XMLHttpRequest""", text)
    data = page_json(text)
    assert data["format"] == "patternc-explorer" and data["n"] == 1024
    assert data["layouts"][0]["terms"][1] == {"label": "global(16)", "text": "causal & global(16)"}


@pytest.mark.parametrize("n", [4096, 1_048_576])
@pytest.mark.parametrize("stack", STACKS, ids=[s.stem for s in STACKS])
def test_every_stack_fits_the_page_limit(stack, n):
    size = built_page(stack, n).stat().st_size
    assert size < PAGE_LIMIT, f"{stack.name} at n = {n}: {size:,} bytes"
    data = page_json(built_page(stack, n).read_text())
    start = data["head_layout"][0][0]
    assert data["layouts"][start]["overview"] is not None and data["layouts"][start]["detail"] is not None


def test_show_html_writes_the_page(capsys, tmp_path):
    page = tmp_path / "lf.html"
    code = main(["show", str(ROOT / "conf/pattern/longformer.yaml"), "--n", "2048", "--layer", "7",
                 "--head", "1", "--html", str(page)])
    assert code == 0
    assert f"wrote {page}" in capsys.readouterr().out
    data = page_json(page.read_text())
    assert data["start"] == [7, 1]
    assert data["expressions"][data["head_expression"][7][1]] == "causal & (dilated(256, 2) | global(16))"
    assert [p.name for p in tmp_path.iterdir()] == ["lf.html"]


@pytest.mark.parametrize("where, message", [
    pytest.param("missing/page.html", "missing does not exist", id="missing_directory"),
    pytest.param("file.txt/page.html", "file.txt is not a directory", id="parent_is_a_file"),
    pytest.param("unwritable/page.html", "", id="unwritable_directory"),
])
def test_show_html_refuses_a_bad_path(capsys, tmp_path, where, message):
    (tmp_path / "file.txt").write_text("x")
    target = tmp_path / where
    if where.startswith("unwritable"):
        (tmp_path / "unwritable").mkdir(mode=0o555)
        if os.access(tmp_path / "unwritable", os.W_OK):  # root writes anywhere: take a folder it cannot
            target = Path("/sys/page.html")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(["show", "causal & window(8)", "--n", "64", "--html", str(target)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"patternc: error: cannot write {target}: ") and message in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing left behind
    assert not target.exists()


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "page.html"
    target.write_text("the old page")

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(patternc.PatternError, match=r"cannot write .*No space left on device"):
        write_page(target, "<html>new</html>")
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]
    assert target.read_text() == "the old page"


def test_write_explorer_checks_the_path_before_building(tmp_path, monkeypatch):
    monkeypatch.setattr(model, "page_data", lambda *a, **k: pytest.fail("built a page for a bad path"))
    with pytest.raises(patternc.PatternError, match="does not exist"):
        write_explorer(patternc.compile("causal", n=64), tmp_path / "nowhere" / "x.html")


def test_a_head_outside_the_stack_is_refused(capsys):
    cp = patternc.compile(Stack("causal", layers=2, heads=2, overrides=(Override("sink(1)", (1, 2)),)), n=64)
    with pytest.raises(patternc.PatternSizeError, match="outside this stack"):
        page_data(cp, layer=2)


def test_the_readme_explorer_command_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the example names conf/pattern/... relative to the repository
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Show\n") :]
    (line,) = [x for x in section[: section.index("\n### ", 1)].splitlines() if x.startswith("patternc show")]
    argv = line.replace("outputs/", f"{tmp_path}/").split()[1:]
    argv[argv.index("--n") + 1] = "1024"
    assert main(argv) == 0
    assert page_json((tmp_path / "longformer.html").read_text())["start"] == [6, 0]
