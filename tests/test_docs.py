"""The user reference in the repository stays true: docs/language.md carries every primitive as its
entry describes it, every entry documents itself with an example, and the README points there."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from patternc.cli import main
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


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` (a whole line, e.g. ``"### Compile"``) up to the next heading of
    its level or above, outside code blocks."""
    level = len(heading.split(" ", 1)[0])
    lines = text.splitlines(keepends=True)
    start = lines.index(heading + "\n") + 1
    fenced = False
    for i in range(start, len(lines)):
        fenced ^= lines[i].startswith("```")
        marks = len(lines[i]) - len(lines[i].lstrip("#"))
        if not fenced and 0 < marks <= level and lines[i][marks:marks + 1] == " ":
            return "".join(lines[start:i])
    return "".join(lines[start:])


def _python_block(section: str, page: str = "README.md") -> str:
    body = _section((ROOT / page).read_text(), section)
    start = body.index("```python\n") + len("```python\n")
    return body[start: body.index("```", start)]


README_PYTHON = {"### Compile", "### Export to FlexAttention", "### A Hugging Face model under a pattern"}


def test_every_python_block_of_the_readme_is_run_by_a_test_here():
    text = (ROOT / "README.md").read_text()
    assert text.count("```python\n") == len(README_PYTHON)
    assert all(_section(text, heading).count("```python\n") == 1 for heading in README_PYTHON)


def test_the_readme_python_example_runs_as_written(monkeypatch):
    monkeypatch.chdir(ROOT)
    exec(compile(_python_block("### Compile"), "README.md", "exec"), {})


def test_the_readme_flex_attention_example_runs_as_written():
    pytest.importorskip("torch.nn.attention.flex_attention")
    namespace: dict = {"__name__": "readme"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is not fused
        exec(compile(_python_block("### Export to FlexAttention"), "README.md", "exec"), namespace)
    assert namespace["out"].shape == (1, 12, 1024, 64)


def test_the_kernels_page_decode_example_runs_as_written():
    namespace: dict = {}
    exec(compile(_python_block("## Decoding", "docs/kernels.md"), "docs/kernels.md", "exec"), namespace)
    cache, out = namespace["cache"], namespace["out"]
    assert out.shape == (1, 8, 1, 64) and cache.length == 16004
    assert cache.held_keys(0) == 4163 and cache.held_keys() == 2 * 4163  # what the page's comment says


def test_the_readme_hugging_face_example_runs_as_written():
    pytest.importorskip("transformers")
    namespace: dict = {}
    exec(compile(_python_block("### A Hugging Face model under a pattern"), "README.md", "exec"), namespace)
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


# ---- the README is a guide, the pages link up, and every command in them runs ----------------------

PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    headings = [line for line in _prose(page.read_text()).splitlines() if line.startswith("#")]
    return {_anchor(line.lstrip("#")) for line in headings}


def test_the_readme_is_a_guide_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_heading_that_exist(page):
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_file(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
        assert ROOT in file.parents, f"{page.relative_to(ROOT)} links {target}, outside the repository"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.relative_to(ROOT)} links {target}: no such heading"


def test_the_readme_links_every_page_and_the_changelog():
    text = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"]({page.relative_to(ROOT)})" in text, f"the README does not link {page.relative_to(ROOT)}"


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), re.S | re.M)


CONSOLE_PAGES = [ROOT / "README.md", ROOT / "docs" / "inference.md", ROOT / "docs" / "language.md"]


@pytest.mark.parametrize("page", CONSOLE_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_console_block_prints_what_it_shows(capsys, monkeypatch, page):
    monkeypatch.chdir(ROOT)  # the examples name conf/pattern/... relative to the repository
    blocks = _blocks(page, "console")
    assert blocks
    for block in blocks:
        command, *shown = block.strip().splitlines()
        main(shlex.split(command.removeprefix("$ "))[1:])
        out, err = capsys.readouterr()
        assert (out + err).splitlines() == shown, f"{page.relative_to(ROOT)}: {command}"


COMMAND_PAGES = [ROOT / "README.md", *(ROOT / "docs" / p for p in ("explorer.md", "search.md", "kernels.md"))]
SMALL_N = 2048  # patternc commands of the pages run at this length (or theirs, if shorter)


def _commands(page: Path) -> list[str]:
    """The bash blocks' commands, continuation lines joined, comments dropped."""
    text = "\n".join(_blocks(page, "bash")).replace("\\\n", " ")
    return [line.split("  # ", 1)[0].strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _search_overrides(argv: list[str], tmp_path: Path) -> list[str]:
    """A patternc-search command's overrides as one job of it composes them: a sweep's first value,
    no launcher, a database URL a local sqlite file."""
    kept = []
    for arg in argv:
        if arg == "-m" or arg.startswith(("hydra.", "hydra/")):
            continue
        key, _, value = arg.partition("=")
        value = value.replace("$DB", f"sqlite:///{tmp_path}/s.db")
        plain = re.fullmatch(r"[\w.,:/+@-]*", value)
        kept.append(f"{key}={value.split(',')[0]}" if plain else f"{key}='{value}'")  # shlex took the quotes
    return kept


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_of_the_pages_runs_or_composes(capsys, tmp_path, monkeypatch, page):
    """``patternc`` commands run (at a short length, writing under a temporary directory);
    ``patternc-search`` commands compose and pass the space's checks (a study takes minutes);
    a benchmark script and an extra they name exist. ``patternc bench`` is tests/test_cli_bench.py's."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from search.app import CONF
    from search.space import check_space

    monkeypatch.chdir(ROOT)
    pyproject = (ROOT / "pyproject.toml").read_text()
    optional = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = re.findall(r"^([\w-]+) = \[", optional, re.M)
    commands = _commands(page)
    assert commands
    for line in commands:
        argv = shlex.split(line.replace("outputs/", f"{tmp_path}/"))
        if argv[0].startswith("DB="):
            continue
        if argv[0] == "python3":  # the README's two commands: .ci/run runs them as written
            assert line in (ROOT / ".ci" / "run").read_text().splitlines(), line
            continue
        if argv[:2] == ["pip", "install"]:
            assert set(re.findall(r"\[(.*)\]", argv[-1])[0].split(",")) <= set(extras), line
        elif argv[0] == "python":
            assert (ROOT / argv[1]).is_file(), line
        elif argv[0] == "patternc-search":
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = OmegaConf.to_object(compose("config", overrides=_search_overrides(argv[1:], tmp_path)))
            check_space(cfg.space)
        elif argv[:2] == ["patternc", "bench"]:
            continue
        else:
            assert argv[0] == "patternc", line
            if "--n" in argv:
                argv[argv.index("--n") + 1] = str(min(int(argv[argv.index("--n") + 1]), SMALL_N))
            assert main(argv[1:]) == 0, line
            capsys.readouterr()


def test_the_search_page_python_example_runs_as_written():
    """docs/search.md's evaluate() example, on the task it names, trained for 4 steps instead of 400."""
    code = _python_block("## Evaluating one pattern", "docs/search.md")
    assert "search.MQARConfig()" in code
    import search

    task = search.MQARConfig()
    task = dataclasses.replace(task, train=dataclasses.replace(task.train, steps=4, eval_sequences=16))
    namespace: dict = {"short": task}
    exec(compile(code.replace("search.MQARConfig()", "short"), "docs/search.md", "exec"), namespace)
    assert 0 <= namespace["r"].accuracy <= 1 and "48-127" in namespace["r"].buckets


def test_the_search_page_llama2c_example_runs_as_written(tmp_path):
    """docs/search.md's calibration on the stories260K file: its Python block samples the ids, and its
    evaluate command scores a pattern on them through the app (outputs/ under a temporary directory)."""
    pytest.importorskip("transformers")
    from hydra import compose, initialize_config_dir

    from search.app import CONF, run_evaluate

    section = "## Calibration: a pretrained model, no training"
    code = _python_block(section, "docs/search.md").replace("outputs/", f"{tmp_path}/")
    exec(compile(code, "docs/search.md", "exec"), {})
    assert np.load(tmp_path / "stories-ids.npy").shape == (2, 64)
    (command,) = [line for line in _commands(ROOT / "docs" / "search.md") if "stories260K.bin" in line
                  and "mode=evaluate" in line]
    argv = shlex.split(command.replace("outputs/", f"{tmp_path}/"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*_search_overrides(argv[1:], tmp_path), "task.threads=1"])
    result = run_evaluate(cfg, tmp_path)
    assert result["task"] == "calibrate" and 0 < result["score"] < 1


# ---- the version and the record ----------------------------------------------------------------------


def test_the_version_is_one_in_pyproject_the_package_and_the_changelog():
    import patternc

    (version,) = re.findall(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    (latest,) = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)[:1]
    assert patternc.__version__ == version == latest


RESULTS = ROOT / "docs" / "results.md"
HEADER = "| date | machine | commit | command | figure |"


def _result_rows() -> list[list[str]]:
    lines = RESULTS.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if line == HEADER:
            assert lines[i + 1] == "|---|---|---|---|---|"
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]]
                assert len(cells) == 5, row
                rows.append(cells)
    return rows


def _in_git_checkout() -> bool:
    try:
        done = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True,
                              text=True, check=False)
    except OSError:
        return False
    return done.returncode == 0 and done.stdout.strip() == "true"


def test_every_result_names_a_date_a_machine_a_commit_and_a_command_that_exists():
    rows = _result_rows()
    assert len(rows) >= 30
    machines = set(re.findall(r"\*\*([\w-]+)\*\*,", RESULTS.read_text()))
    subcommands = {"compile", "show", "check", "export", "kv", "bench"}
    for date, machine, commit, command, figure in rows:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and machine in machines, (date, machine)
        assert re.fullmatch(r"[0-9a-f]{7,40}", commit) and re.search(r"\d", figure), (commit, figure)
        argv = shlex.split(command.strip("`"))
        if argv[0] == "python":
            assert argv[1] == "-m" or (ROOT / argv[1]).is_file(), command
            assert argv[1] != "-m" or (ROOT / argv[-1]).is_file(), command
        elif argv[0] == "patternc":
            assert argv[1] in subcommands, command
        else:
            assert argv[0] == "patternc-search", command


def test_every_result_commit_is_in_the_history_on_its_date():
    if not _in_git_checkout():
        pytest.skip("not a git checkout: the commits cannot be looked up")
    for date, _, commit, _, _ in _result_rows():
        assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                              capture_output=True, check=False).returncode == 0, f"no commit {commit}"
        shown = subprocess.run(["git", "show", "-s", "--format=%ad", "--date=short", commit], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        assert shown == date, f"{commit} is of {shown}, the row says {date}"


def test_the_record_describes_every_benchmark_script():
    listed = set(re.findall(r"^\| `(benchmarks/\w+\.py)` \|", RESULTS.read_text(), re.M))
    assert listed == {str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("*.py")}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_long_page_opens_with_its_contents(page):
    """A page over 120 lines lists its sections before the first one (the links are checked above)."""
    text = page.read_text()
    if len(text.splitlines()) <= 120 or page.name == "CHANGELOG.md":
        return
    prose = _prose(text).replace("\n## Contents\n", "\n")  # the README's contents are a section
    top = prose[: prose.index("\n## ")]
    sections = [line for line in prose.splitlines() if line.startswith("## ")]
    assert len(re.findall(r"\]\(#", top)) >= len(sections) - 1, f"{page.relative_to(ROOT)} has no contents"


def _within(shown, actual) -> bool:
    """Every key ``shown`` has, ``actual`` has with the same value (lists item by item)."""
    if isinstance(shown, dict):
        return isinstance(actual, dict) and all(k in actual and _within(v, actual[k])
                                                for k, v in shown.items())
    if isinstance(shown, list):
        return isinstance(actual, list) and len(shown) == len(actual) and all(map(_within, shown, actual))
    return shown == actual


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_config_shown_from_a_file_says_what_the_file_says(page):
    """A YAML block that opens with ``# conf/....yaml`` shows that file, or part of it ("abridged")."""
    yaml = pytest.importorskip("yaml")
    for block in _blocks(page, "yaml"):
        named = re.match(r"# (conf/\S+\.yaml)", block)
        if named:
            assert _within(yaml.safe_load(block), yaml.safe_load((ROOT / named[1]).read_text())), named[1]
