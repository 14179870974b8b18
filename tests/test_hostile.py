"""The project's adversarial suite for the compiler and the CLI: input a hostile user would try.

Every command runs under the bounds users are promised (2 GiB of address space and 10 s each,
``tests/bounded.py``) and must end with a clear error (exit status 2, ``patternc: error:`` or
argparse's message naming the option) or a correct result: never a traceback, a hang, a
``MemoryError`` or silent wrong output. The search's own adversarial suite is
``tests/test_hostile_search.py``; the kernel's inputs are in the kernel tests.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import pytest

import patternc
from patternc.explore import explorer_html, page_data
from patternc.explore.html import SCRIPTS, static_text
from patternc.export.file import pack, write
from tests.bounded import SECONDS, run_bounded
from tests.explore_pages import page_json

HUGE = "9" * 400  # beyond float range
HUGER = "9" * 5000  # beyond Python's default int/str conversion limit (4300 digits)

# (id, argv, exit status, text the output must contain); "{tmp}" is the test's directory
CASES = [
    # blocks: larger than n is n; 2**63 - 1 must not overflow int64 into a density of 0
    ("block-int64-max", ["compile", "causal & window(64)", "--n", "1024", "--block", str(2**63 - 1)], 0,
     "n = 1024, block 1024x1024"),
    ("block-larger-than-n", ["compile", "causal & window(64)", "--n", "1024", "--block", "32768"], 0,
     "0.1210"),
    ("block-too-many-pairs", ["compile", "causal", "--n", "100000", "--block", "4096,2048"], 2,
     "token pairs in a block of 4096 x 2048"),
    # sizes refused before anything is allocated
    ("too-many-blocks", ["compile", "causal", "--n", "10000000"], 2,
     "bytes to lower causal at n = 10,000,000"),
    # two terms under every block limit needed 11.7 GB: memory is estimated before lowering
    ("two-terms-too-large", ["compile", "causal & (stride(3) | window(5))", "--n", "1400000"], 2,
     "bytes to lower causal & (stride(3) | window(5)) at n = 1,400,000 in blocks of 128 x 128"),
    ("reach-state-too-large", ["check", "causal & window(64)", "--n", "2147483647"], 2,
     "bytes of block-level reachability state"),
    ("exact-state-too-large", ["check", "causal & window(64)", "--n", "100000", "--exact-limit", "1000000"],
     2, "lower the exact limit"),
    ("n-too-large", ["compile", "causal", "--n", str(2**31)], 2, "argument --n: must be between 1 and"),
    ("heads-billion", ["compile", "{tmp}/heads.yaml", "--n", "64"], 2, "layers x heads (1 x 1000000000)"),
    ("alias-bomb", ["compile", "{tmp}/bomb.yaml", "--n", "64"], 2, "expands to more than"),
    ("recursive-alias", ["compile", "{tmp}/recursive.yaml", "--n", "64"], 2, "recursive alias"),
    ("deep-yaml", ["compile", "{tmp}/deep.yaml", "--n", "64"], 2, "nested more than 32 levels deep"),
    ("huge-file", ["compile", "{tmp}/huge.yaml", "--n", "64"], 2, "larger than 1,048,576 bytes"),
    # numbers beyond float range, wherever they are written
    ("int-in-expression", ["compile", f"causal & window({HUGE})", "--n", "64"], 2,
     "an integer of 400 digits"),
    ("int-in-list", ["compile", f"columns([1, {HUGE}])", "--n", "64"], 2, "an integer of 400 digits"),
    ("int-past-str-limit", ["compile", f"window({HUGER})", "--n", "64"], 2, "(5000 characters) is too large"),
    ("int-in-set", ["compile", "causal & window($w)", "--n", "64", "--set", f"w={HUGE}"], 2,
     "an integer of 400 digits"),
    ("int-in-stack-params", ["compile", "{tmp}/bigparam.yaml", "--n", "64"], 2, "an integer of 400 digits"),
    ("int-past-str-limit-in-stack", ["compile", "{tmp}/hugeparam.yaml", "--n", "64"], 2,
     "value has 5000 digits"),
    # files that are not stack files
    ("not-utf8", ["compile", "{tmp}/latin1.yaml", "--n", "64"], 2, "not UTF-8 text (byte 16 is 0xe9)"),
    ("duplicate-key", ["compile", "{tmp}/duplicate.yaml", "--n", "64"], 2,
     "line 3: duplicate key 'default' (first on line 1)"),
    ("declared-causal-is-not", ["compile", "{tmp}/leaky.yaml", "--n", "64"], 2,
     "declared causal, but layer 1 head 0 (overrides[0].expr: window(4)) lets query 0 see key 1"),
    ("directory-as-spec", ["compile", "{tmp}", "--n", "64"], 2, "is a directory, not a pattern or a stack"),
    ("file-without-yaml", ["compile", "{tmp}/stack.txt", "--n", "64"], 2, "stack files end in .yaml"),
    ("missing-path", ["compile", "conf/pattern/nothere", "--n", "64"], 2, "no such stack file"),
    # options out of range or meaningless
    ("width-zero", ["show", "causal", "--n", "64", "--width", "0"], 2, "argument --width: must be between"),
    ("width-negative", ["show", "causal", "--n", "64", "--width", "-5"], 2, "argument --width"),
    ("width-huge", ["show", "causal", "--n", "64", "--width", "1000000000"], 2, "argument --width"),
    ("png-other-extension", ["show", "causal", "--n", "64", "--png", "{tmp}/out.jpg"], 2,
     "does not end in .png"),
    ("png-directory", ["check", "causal", "--n", "64", "--png", "{tmp}/dir.png"], 2, "is a directory"),
    ("exact-limit-negative", ["check", "causal", "--n", "64", "--exact-limit", "-1"], 2,
     "argument --exact-limit: must be at least 0"),
    ("max-depth-negative", ["check", "causal", "--n", "64", "--max-depth", "-3"], 2,
     "argument --max-depth: must be at least 1"),
    ("export-empty-path", ["export", "causal", "--n", "64", "--format", "file", "-o", ""], 2,
     "the path is empty"),
    ("bench-heads-zero", ["bench", "causal", "--n", "64", "--backend", "kernel", "--heads", "0"], 2,
     "argument --heads"),
    ("bench-head-dim-huge", ["bench", "causal", "--n", "64", "--backend", "kernel", "--head-dim",
                             "100000000"], 2, "argument --head-dim"),
    ("bench-memory", ["bench", "causal & window(64)", "--n", "2000000", "--backend", "kernel", "--heads",
                      "1024", "--head-dim", "1024", "--batch", "1024"], 2, "against this machine's memory"),
]


def _files(tmp: Path) -> None:
    (tmp / "heads.yaml").write_text("heads: 1000000000\ndefault: causal\n")
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    bomb += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    (tmp / "bomb.yaml").write_text("default: causal\nparams:\n" +
                                   "".join(f"  {line}\n" for line in bomb))
    (tmp / "recursive.yaml").write_text("default: causal\noverrides: &o [*o]\n")
    (tmp / "deep.yaml").write_text("default: causal\nparams: " + "[" * 20000 + "]" * 20000 + "\n")
    with open(tmp / "huge.yaml", "wb") as f:
        f.truncate(50 << 20)
    (tmp / "bigparam.yaml").write_text(f"default: causal & window($w)\nparams: {{w: {HUGE}}}\n")
    (tmp / "hugeparam.yaml").write_text(f"default: causal & window($w)\nparams: {{w: {HUGER}}}\n")
    (tmp / "latin1.yaml").write_bytes("description: caf\u00e9\ndefault: causal\n".encode("latin-1"))
    (tmp / "duplicate.yaml").write_text("default: causal\nlayers: 2\ndefault: window(4)\n")
    (tmp / "leaky.yaml").write_text("layers: 2\ncausal: true\ndefault: causal\n"
                                    "overrides:\n  - layers: 1\n    expr: window(4)\n")
    (tmp / "stack.txt").write_text("default: causal\n")
    (tmp / "dir.png").mkdir()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("hostile")
    _files(tmp)
    commands = [[arg.replace("{tmp}", str(tmp)) for arg in argv] for _, argv, _, _ in CASES]
    root = Path(__file__).resolve().parent.parent
    return dict(zip((case[0] for case in CASES), run_bounded(commands, cwd=root), strict=True))


@pytest.mark.parametrize("name, argv, code, text", [pytest.param(*case, id=case[0]) for case in CASES])
def test_hostile_command_is_bounded_and_clear(results, name, argv, code, text):
    got = results[name]
    assert got["code"] == code, f"{argv}: {got}"
    shown = got["out"] if code == 0 else got["err"]
    assert text in shown, shown
    assert got["seconds"] < SECONDS
    if code == 2:
        assert got["out"] == ""
        assert "Traceback" not in got["err"]
        assert got["err"].startswith(("patternc: error:", "usage: patternc")), got["err"]


def test_block_larger_than_n_is_the_sequence():
    assert patternc.compile("causal", n=100, block=(2**63 - 1, 64)).block == (100, 64)
    huge = patternc.compile("causal & window(64)", n=1024, block=2**63 - 1).stats().per_head[0]
    usual = patternc.compile("causal & window(64)", n=1024).stats().per_head[0]
    assert huge.token_density == usual.token_density


# ---- crafted layout files: a valid hash does not make a stack safe to load ---------------------------


def _crafted(tmp_path: Path, **changes: str) -> Path:
    cp = patternc.compile("causal & window(64)", n=1024)
    tensors, metadata = pack(cp)
    path = tmp_path / "crafted.safetensors"
    write(path, tensors, {**metadata, **changes})  # write() adds a correct content hash
    return path


@pytest.mark.parametrize("changes, message", [
    pytest.param({"stack": " " * (2 << 20)}, "over the limit of 1,048,576", id="stack-too-long"),
    pytest.param({"stack": "[" * 50_000 + "]" * 50_000}, "nested too deeply", id="stack-deeply-nested"),
    pytest.param({"params": '{"a":' * 20_000 + "1" + "}" * 20_000}, "nested too deeply", id="params-nested"),
    pytest.param({"stack": json.dumps({"default": "causal", "layers": 10**12})}, "layers x heads",
                 id="stack-huge"),
    pytest.param({"stack": json.dumps({"default": "causal", "overrides": [{"expr": "causal"}] * 5_000})},
                 "override rules: 5,000 is over the limit", id="stack-many-overrides"),
    pytest.param({"n": "9" * 5000}, "metadata 'n' is malformed", id="n-digits"),
    pytest.param({"n": str(10**12)}, "n must be an integer in [1, 2,147,483,647]", id="n-huge"),
    pytest.param({"stack": '{"default": "causal", "layers": ' + HUGER + "}"}, "metadata 'stack' is malformed",
                 id="int-digits"),
])
def test_crafted_layout_file_is_a_layout_file_error(tmp_path, changes, message):
    path = _crafted(tmp_path, **changes)
    with pytest.raises(patternc.LayoutFileError) as refused:
        patternc.load(path)
    assert message in str(refused.value)
    assert str(path) in str(refused.value)


def test_stack_limits_hold_in_python_too():
    with pytest.raises(patternc.PatternSizeError, match="layers x heads"):
        patternc.Stack("causal", layers=10**5, heads=10**5)
    with pytest.raises(patternc.PatternSizeError, match="bytes to lower all"):
        patternc.compile("all", n=2**21)


# ---- the explorer page: template markers in what a user writes ----------------------------------------

MARKERS = " ".join(f"__{name}__" for name in ("DATA", "JS", "CSS", "TITLE", "SUBTITLE", "N", "VERSION"))


@pytest.mark.parametrize("field", ["title", "expression", "description", "file name"])
def test_template_markers_in_user_text_leave_the_explorer_page_intact(tmp_path, field):
    """The page's template is filled once: ``__DATA__`` or ``__JS__`` in a title, an expression (a
    ``$parameter`` may be called that), a description or a stack file's name is text, not a place
    for the data or the scripts."""
    expr = "causal & (window($__DATA__) | sink($__JS__))" if field == "expression" else "causal & window(8)"
    stack = {"layers": 2, "heads": 2, "block": 16, "default": expr,
             "params": {"__DATA__": 8, "__JS__": 2} if field == "expression" else {},
             "description": MARKERS if field == "description" else "a window"}
    path = tmp_path / (f"{MARKERS}.yaml" if field == "file name" else "window.yaml")
    path.write_text(json.dumps(stack), encoding="utf-8")  # JSON is YAML
    cp = patternc.compile(path, n=64)
    title = MARKERS if field == "title" else None
    text = explorer_html(cp, title=title)
    expected = json.loads(json.dumps(page_data(cp, title=title)))
    assert page_json(text) == expected
    assert f"<h1>{html.escape(expected['title'])}</h1>" in text
    if field == "description":
        assert html.escape(MARKERS) in text.split("<h1>")[1].split("</p>")[0]  # in the subtitle
    for name in SCRIPTS:  # every script once, where the template puts it
        assert text.count(static_text(name)) == 1, name
    assert text.count(static_text("explorer.css")) == 1 and text.count("<script") == 2


# ---- layout files from elsewhere, loaded under the same bounds --------------------------------------

TWO_TERMS = json.dumps({"default": "causal & (stride(3) | window(5))"})


def _shaped(tmp_path: Path, n: int) -> Path:
    """A file of TWO_TERMS at ``n`` whose arrays have the sizes its header claims, but no blocks."""
    cp = patternc.compile("causal & window(64)", n=1024)
    _, metadata = pack(cp)
    rows = -(-n // 128)
    tensors = {"layout.0.indptr": np.zeros(rows + 1, np.int32), "layout.0.indices": np.zeros(0, np.int32),
               "layout.0.full": np.zeros(0, bool), "table": np.zeros((1, 1), np.int32)}
    path = tmp_path / "shaped.safetensors"
    write(path, tensors, {**metadata, "stack": TWO_TERMS, "n": str(n)})
    return path


def _files_from_elsewhere(tmp: Path) -> dict[str, Path]:
    forged = _crafted(tmp, stack=TWO_TERMS, n=str(2**20)).rename(tmp / "forged.safetensors")
    zero = tmp / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    fifo = tmp / "fifo.safetensors"
    os.mkfifo(fifo)
    huge = tmp / "huge.safetensors"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # sparse: no disk used
    good = tmp / "good.safetensors"
    patternc.compile("causal & window(64)", n=1024).save(good)
    return {"forged": forged, "shaped": _shaped(tmp, 1_400_000), "zero": zero, "fifo": fifo, "huge": huge,
            "good": good}


# (file, exit status, text the output must contain)
FILE_CASES = [
    pytest.param("forged", 2, "tensor 'layout.0.indptr' has 9 entries, but n = 1,048,576 in blocks of "
                 "128 x 128 has 8,192 block rows", id="forged-n-small-arrays"),
    pytest.param("shaped", 2, "bytes to lower causal & (stride(3) | window(5)) at n = 1,400,000",
                 id="forged-n-shaped"),
    pytest.param("zero", 2, "cannot read layout file: it is a device, not a regular file",
                 id="dev-zero-symlink"),
    pytest.param("fifo", 2, "cannot read layout file: it is a FIFO, not a regular file", id="fifo"),
    pytest.param("huge", 2, "bytes in the layout file: 3,221,225,472 is over the limit",
                 id="huge-sparse-file"),
    pytest.param("good", 0, "loaded CompiledPattern('causal & window(64)', n=1024", id="genuine"),
]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, dict]:
    files = _files_from_elsewhere(tmp_path_factory.mktemp("files"))
    return dict(zip(files, run_bounded([["load", str(path)] for path in files.values()]), strict=True))


@pytest.mark.parametrize("name, code, text", FILE_CASES)
def test_a_layout_file_from_elsewhere_is_bounded_and_clear(loaded, name, code, text):
    got = loaded[name]
    assert got["code"] == code, got
    assert text in (got["out"] if code == 0 else got["err"])
    assert got["seconds"] < SECONDS
    if code == 2:
        assert f"{name}.safetensors" in got["err"]  # the file is named
