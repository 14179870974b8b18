"""The user reference in the repository stays true: docs/language.md carries every primitive as its
entry describes it, every entry documents itself with an example, and the README points there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from patternc.primitives import PRIMITIVES
from patternc.primitives.reference import BEGIN, END, markdown

ROOT = Path(__file__).resolve().parent.parent
LANGUAGE = ROOT / "docs" / "language.md"


def test_the_reference_lists_the_primitives_as_their_entries_say():
    text = LANGUAGE.read_text()
    written = text[text.index(BEGIN) + len(BEGIN): text.index(END)].strip()
    assert written == markdown(), ("docs/language.md is stale: run "
                                   "python -m patternc.primitives.reference docs/language.md")


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_every_primitive_documents_itself(name):
    entry = PRIMITIVES[name]
    assert ">>> " in entry.doc and "patternc.compile(" in entry.doc, f"{name}: no example that runs"
    assert entry.allows and entry.source
    assert all(arg.doc for arg in entry.args), f"{name} has an undocumented argument"


def test_the_readme_links_the_reference():
    assert "docs/language.md" in (ROOT / "README.md").read_text()


def test_no_file_cites_a_design_document_outside_the_repository():
    cited = [p for p in ROOT.glob("**/*.py")
             if ".venv" not in p.parts and p.name != "test_docs.py" and "DESIGN.md" in p.read_text()]
    assert cited == []


def _python_block(section: str) -> str:
    text = (ROOT / "README.md").read_text()
    body = text[text.index(f"## {section}\n"):]
    start = body.index("```python\n") + len("```python\n")
    return body[start: body.index("```", start)]


def test_the_readme_python_example_runs_as_written(monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(_python_block("Python"), "README.md", "exec"), {})


def test_the_readme_decode_example_runs_as_written():
    namespace: dict = {}
    exec(compile(_python_block("Inference: the KV cache a pattern needs"), "README.md", "exec"), namespace)
    cache, out = namespace["cache"], namespace["out"]
    assert out.shape == (1, 8, 1, 64) and cache.length == 16004
    assert cache.held_keys(0) == 4163 and cache.held_keys() == 2 * 4163  # what the README's comment says


def test_the_readme_hugging_face_example_runs_as_written():
    pytest.importorskip("transformers")
    namespace: dict = {}
    exec(compile(_python_block("Hugging Face models"), "README.md", "exec"), namespace)
    assert namespace["sparse"].shape == (1, 1024, 256) and namespace["out"].sequences.shape == (1, 1032)
    held = namespace["out"].cache.memory().held_keys[0]
    assert held == (266, 266) and f"per KV head: {held}" in (ROOT / "README.md").read_text()
    assert not namespace["model"].config._attn_implementation.startswith("patternc")  # densified


def test_the_inference_guide_example_runs_as_written_and_prints_what_it_says(capsys):
    pytest.importorskip("transformers")
    text = (ROOT / "docs" / "inference.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    namespace: dict = {}
    exec(compile(text[start: text.index("```", start)], "docs/inference.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["(146, 146) (132, 132)", "0.156 of a dense cache"]  # the comments in the guide
    assert "# layer 0, per KV head: (146, 146) (132, 132)" in text and "# 0.156 of a dense cache" in text


def test_the_readme_links_the_inference_guide():
    assert "docs/inference.md" in (ROOT / "README.md").read_text()


def test_the_graph_guide_runs_and_prints_what_its_comments_say(capsys):
    """Every ``print(...)  # out`` line of docs/graph.md prints ``out``, in order, the blocks run as
    one script."""
    pytest.importorskip("networkx")
    text = (ROOT / "docs" / "graph.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/graph.md", "exec"), namespace)
    said = [line.split("  # ", 1)[1] for block in blocks for line in block.splitlines()
            if line.startswith("print(")]
    assert len(said) >= 8
    assert capsys.readouterr().out.splitlines() == said


def test_the_readme_links_the_graph_guide():
    assert "docs/graph.md" in (ROOT / "README.md").read_text()
