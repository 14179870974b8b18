"""`patternc check` as a user runs it in CI: reports, JSON, exit statuses, the growth plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patternc.cli import main

ROOT = Path(__file__).resolve().parent.parent
STRIDED = str(ROOT / "conf" / "pattern" / "sparse_transformer_strided.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_strided_stack_mixes_in_two_layers(capsys):
    code, out, _ = run(capsys, "check", STRIDED, "--n", "4096", "--require-mixing")
    assert code == 0
    assert "exact, token by token" in out
    assert "mixing depth: 2 layers" in out
    assert "covered at depth 12: 100.00%" in out


def test_json_has_the_documented_fields(capsys):
    code, out, _ = run(capsys, "check", "causal & window(10)", "--n", "100", "--json", "--max-depth", "20")
    assert code == 0  # not mixing is no error without --require-mixing
    data = json.loads(out)
    assert data["mixing_depth"] == 11  # ceil((n - 1) / (w - 1))
    assert data["exact"] is True
    assert data["empty_rows"] == 0
    assert data["covered_fraction"] == pytest.approx(sum(min(q + 1, 10) for q in range(100)) / 5050)
    assert data["unreachable"] == [99, 0]


def test_never_mixing_is_reported_as_null(capsys):
    code, out, _ = run(capsys, "check", "chunk(16)", "--n", "64", "--json")
    data = json.loads(out)
    assert (code, data["mixing_depth"], data["never"]) == (0, None, True)


def test_require_mixing_fails_a_stack_that_does_not_cover(capsys):
    code, out, err = run(capsys, "check", "causal & window(64)", "--n", "4096", "--require-mixing")
    assert code == 1
    assert "unreachable: query 4095 never hears key 0" in out
    assert "does not certainly cover its envelope" in err


def test_empty_rows_are_an_error(capsys):
    code, out, _ = run(capsys, "check", "band(1, 3)", "--n", "100")
    assert code == 1
    assert "error: 1 query rows attend no key" in out


def test_causal_leak_is_an_error(capsys, tmp_path):
    stack = tmp_path / "leaky.yaml"
    stack.write_text("layers: 2\nheads: 2\ncausal: true\ndefault: causal & window(8)\n"
                     "overrides:\n  - layers: 1\n    heads: 1\n    expr: window(8)\n")
    code, out, err = run(capsys, "check", str(stack), "--n", "256")
    assert code == 2 and out == ""
    assert "declared causal, but layer 1 head 1 (overrides[0].expr: window(8)) lets query" in err


def test_block_level_bounds_above_the_exact_limit(capsys):
    code, out, _ = run(capsys, "check", STRIDED, "--n", "65536", "--exact-limit", "1024")
    assert code == 0
    assert "block-level bounds" in out
    assert "at least 2 layers" in out


def test_growth_png(capsys, tmp_path):
    png = tmp_path / "growth.png"
    code, _, _ = run(capsys, "check", STRIDED, "--n", "1024", "--png", str(png))
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_exits_2(capsys):
    code, _, err = run(capsys, "check", "causal & windw(3)", "--n", "64")
    assert code == 2
    assert "^^^^^" in err


def test_closest_path_is_in_tokens_when_exact(capsys):
    """The issue's case: key 16 is no global token, so the path runs along the window; it is printed
    as tokens, never as the block ranges that made it read as if key 16 reached query 8191."""
    code, out, _ = run(capsys, "check", str(ROOT / "conf" / "pattern" / "longformer.yaml"), "--n", "8192")
    assert code == 0
    assert "unreachable: query 8191 never hears key 16 within 12 layers" in out
    line = next(line for line in out.splitlines() if line.startswith("closest"))
    assert "exact, token by token" in line and "[" not in line
    assert line.endswith("16@0 -> 271@1 -> 526@2 -> 781@3 -> 1036@4 -> 1291@5 -> 1546@6 -> 2056@7 -> "
                         "2566@8 -> 3076@9 -> 3586@10 -> 4096@11 -> 4606@12")
    assert "than token 4606" in line


def test_closest_path_is_labelled_as_block_ranges_above_the_exact_limit(capsys):
    code, out, _ = run(capsys, "check", "causal & window(64)", "--n", "4096", "--exact-limit", "1024")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("closest"))
    assert line.startswith("closest, as block ranges (block-level analysis: a range may hold tokens that "
                           "never hear key 0")
    assert line.endswith("[0..127]@0 -> [128..255]@1")
