"""The `patternc` command as a user runs it: stats, drawings, PNGs, and errors with exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from patternc.cli import main

ROOT = Path(__file__).resolve().parent.parent
STACKS = sorted((ROOT / "conf" / "pattern").glob("*.yaml"))

# Golden drawings at n = 1024, block 128 (8 x 8 blocks): '#' full, '+' partial, '.' empty.
GOLDEN = {
    "causal & window(300)": """
+.......
#+......
+#+.....
++#+....
.++#+...
..++#+..
...++#+.
....++#+""",
    "causal & (sink(128) | window(129))": """
+.......
#+......
#++.....
#.++....
#..++...
#...++..
#....++.
#.....++""",
    "chunk(256) | columns([1000])": """
##.....+
##.....+
..##...+
..##...+
....##.+
....##.+
......##
......##""",
    "band(-200, -1)": """
+++.....
.+++....
..+++...
...+++..
....+++.
.....+++
......++
.......+""",
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("expr", list(GOLDEN), ids=list(GOLDEN))
def test_show_draws_golden_layout(capsys, expr):
    code, out, _ = run(capsys, "show", expr, "--n", "1024")
    assert code == 0
    drawing = out.splitlines()[2:10]
    assert "\n".join(drawing) == GOLDEN[expr].strip()


def test_show_downsamples_large_layouts(capsys):
    code, out, _ = run(capsys, "show", "causal", "--n", "4096", "--width", "8")
    assert code == 0
    lines = out.splitlines()
    assert lines[2:10] == ["+.......", "#+......", "##+.....", "###+....", "####+...", "#####+..",
                           "######+.", "#######+"]
    assert "(each character is 4 x 4 blocks)" in out


def test_show_writes_png(capsys, tmp_path):
    png = tmp_path / "layout.png"
    code, out, _ = run(capsys, "show", "causal & (window(300) | global(64))", "--n", "2048",
                       "--png", str(png))
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in out


def test_compile_json_has_the_documented_fields(capsys):
    code, out, _ = run(capsys, "compile", "causal & window($w)", "--n", "1000", "--block", "64,32",
                       "--set", "w=100", "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["n"], data["block"], data["layers"], data["heads"]) == (1000, [64, 32], 1, 1)
    (head,) = data["per_head"]
    assert {"layer", "head", "nnz", "full_blocks", "partial_blocks", "allowed_pairs"} <= set(head)
    # causal & window(100) allows min(q + 1, 100) keys for each query q.
    assert head["allowed_pairs"] == sum(min(q + 1, 100) for q in range(1000))
    assert head["full_blocks"] + head["partial_blocks"] == head["nnz"]


def test_compile_stack_prints_every_head_and_warnings(capsys):
    stack = ROOT / "conf" / "pattern" / "sparse_transformer_strided.yaml"
    code, out, _ = run(capsys, "compile", str(stack), "--n", "4096")
    assert code == 0
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 12 * 8
    assert "causal & stride(round(sqrt(n)))" in out
    assert "warning:" in out  # a stride of 64 at block 128 touches every block on its diagonals


@pytest.mark.parametrize(
    ("argv", "message", "caret_column"),
    [
        pytest.param(["compile", "causal & windw(512)", "--n", "64"], "unknown primitive 'windw'", 10,
                     id="unknown-primitive"),
        pytest.param(["compile", "causal & window(sqrt(n))", "--n", "1000"], "must be an integer", 17,
                     id="non-integral-count"),
        pytest.param(["compile", "window($w)", "--n", "64"], "parameter $w is not bound", 8,
                     id="unbound-parameter"),
        pytest.param(["compile", "causal &", "--n", "64"], "expected a pattern", 9, id="dangling-operator"),
    ],
)
def test_bad_expressions_exit_2_with_caret(capsys, argv, message, caret_column):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err
    caret_line = err.splitlines()[-1]
    assert caret_line.index("^") - 2 == caret_column - 1  # two spaces of indent, 1-based column


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["compile", "causal", "--n", "0"], "argument --n: must be between 1 and", id="n-zero"),
        pytest.param(["compile", "causal", "--n", "64", "--block", "0"], "block size", id="block-zero"),
        pytest.param(["compile", "causal", "--n", "64", "--block", "a,b"], "block", id="block-text"),
        pytest.param(["compile", "missing.yaml", "--n", "64"], "cannot read stack file", id="no-file"),
        pytest.param(["compile", "causal", "--n", "64", "--set", "w=3"], "unknown parameter 'w'",
                     id="unused-parameter"),
        pytest.param(["show", "causal", "--n", "64", "--layer", "3"], "outside this stack",
                     id="layer-out-of-range"),
    ],
)
def test_bad_arguments_exit_2(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_malformed_set_is_an_argparse_error(capsys):
    assert main(["compile", "window($w)", "--n", "64", "--set", "w=wide"]) == 2
    assert "must be a number" in capsys.readouterr().err


@pytest.mark.parametrize("stack", STACKS, ids=[p.stem for p in STACKS])
def test_every_shipped_stack_compiles_and_shows(capsys, stack):
    assert run(capsys, "compile", str(stack), "--n", "512")[0] == 0
    code, out, _ = run(capsys, "show", str(stack), "--n", "512")
    assert code == 0
    assert "# full" in out


def test_console_script_is_installed():
    exe = shutil.which("patternc") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "patternc")
    result = subprocess.run([exe, "compile", "causal & windw(3)", "--n", "10"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "^^^^^" in result.stderr
