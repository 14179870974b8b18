"""``patternc export --format flashinfer_variable|flashmask|fa4``: the files hold what the Python API
gives, with metadata; per-KV-head formats refuse a mixed group (exit 2, no file) or take --union."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open
from test_cli_export import run

import patternc

STACK = """\
layers: 2
heads: 4
kv_heads: 2
block: 16
causal: true
default: causal & (chunk(48) | sink(4))
overrides:
  - layers: 1
    heads: 3
    expr: causal & chunk(32)
"""


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text(STACK)
    return path


def metadata(path) -> dict:
    with safe_open(path, "numpy") as f:
        return f.metadata()


def test_flashmask_file(capsys, tmp_path, stack_file):
    path = tmp_path / "out" / "fm.safetensors"
    code, out, _ = run(capsys, "export", stack_file, "--n", 200, "--format", "flashmask", "--union",
                       "-o", path)
    assert code == 0 and f"wrote {path}" in out
    cp = patternc.compile(str(stack_file), 200)
    tensors = safetensors.numpy.load_file(path)
    assert set(tensors) == {"layer0.startend_row_indices", "layer1.startend_row_indices"}
    for l in range(2):
        fm = cp.to_flashmask(l, union=True)
        np.testing.assert_array_equal(tensors[f"layer{l}.startend_row_indices"], fm.startend_row_indices)
    meta = metadata(path)
    assert meta["format"] == "patternc-flashmask" and json.loads(meta["causal"]) == [True, True]
    assert (meta["n"], meta["kv_heads"], json.loads(meta["exact"])) == ("200", "2", False)


def test_flashinfer_variable_file(capsys, tmp_path, stack_file):
    path = tmp_path / "fi.safetensors"
    code, _, _ = run(capsys, "export", stack_file, "--n", 200, "--format", "flashinfer_variable", "--union",
                     "-o", path)
    assert code == 0
    cp = patternc.compile(str(stack_file), 200)
    tensors = safetensors.numpy.load_file(path)
    for l in range(2):
        fi = cp.to_flashinfer_variable(l, union=True)
        for name in ("block_mask_map", "block_row_sz", "block_col_sz"):
            np.testing.assert_array_equal(tensors[f"layer{l}.{name}"], getattr(fi, name))
    assert json.loads(metadata(path)["causal"]) == [True, True]


def test_fa4_file(capsys, tmp_path, stack_file):
    path = tmp_path / "fa4.safetensors"
    code, _, _ = run(capsys, "export", stack_file, "--n", 200, "--format", "fa4", "-o", path)
    assert code == 0
    cp = patternc.compile(str(stack_file), 200)
    tensors = safetensors.numpy.load_file(path)
    for l in range(2):
        fa = cp.to_fa4(l)
        for name in ("mask_block_cnt", "mask_block_idx", "full_block_cnt", "full_block_idx"):
            np.testing.assert_array_equal(tensors[f"layer{l}.{name}"], getattr(fa, name))
    meta = metadata(path)
    assert meta["block_size"] == "16,16" and patternc.Stack.from_dict(json.loads(meta["stack"])) == cp.stack


@pytest.mark.parametrize("fmt", ["flashinfer_variable", "flashmask"])
def test_a_mixed_group_exits_2_and_writes_nothing(capsys, tmp_path, stack_file, fmt):
    path = tmp_path / "no.safetensors"
    code, _, err = run(capsys, "export", stack_file, "--n", 200, "--format", fmt, "-o", path)
    assert code == 2 and not path.exists()
    assert err.startswith("patternc: error: layer 1: KV head 1 (query heads 2-3)") and "--union" in err


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--format", "fa4", "--union"],
                 "--union applies to --format flashinfer_variable or flashmask", id="union_for_fa4"),
    pytest.param(["--format", "flashmask", "--masks"], "--masks applies to --format bsr", id="masks"),
])
def test_misplaced_options_exit_2(capsys, tmp_path, stack_file, argv, message):
    code, _, err = run(capsys, "export", stack_file, "--n", 200, *argv, "-o", tmp_path / "x.safetensors")
    assert code == 2 and message in err


def test_an_unrepresentable_pattern_exits_2(capsys, tmp_path):
    path = tmp_path / "x.safetensors"
    code, _, err = run(capsys, "export", "causal & stride(7)", "--n", 300, "--format", "flashmask",
                       "-o", path)
    assert code == 2 and not path.exists() and "FlashMask cannot express the term stride(7)" in err
