"""``patternc export``: each format written, read back and compared with the Python API; bad
requests exit with status 2 and leave no file."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

import patternc
from patternc.cli import main

ROOT = Path(__file__).resolve().parent.parent
STACK = """\
layers: 2
heads: 2
block: [16, 8]
default: causal & window($w + 4 * h)
params: {w: 10}
overrides:
  - layers: 1
    heads: 1
    expr: causal & (random(1, seed=3) | sink(2))
"""


@pytest.fixture
def stack_file(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text(STACK)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_file_loads_back(capsys, tmp_path, stack_file):
    path = tmp_path / "deep" / "er" / "p.safetensors"  # parents are created
    code, out, _ = run(capsys, "export", stack_file, "--n", 100, "--set", "w=12", "--format", "file",
                       "-o", path)
    assert code == 0 and f"wrote {path}" in out
    cp = patternc.compile(str(stack_file), 100, params={"w": 12})
    loaded = patternc.load(path)
    assert (loaded.stack, loaded.block, loaded.params) == (cp.stack, (16, 8), {"w": 12})
    for l in range(2):
        for h in range(2):
            for a, b in zip(loaded.layout(l, h), cp.layout(l, h), strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
def test_export_bsr_names_every_head(capsys, tmp_path, stack_file, masks):
    path = tmp_path / "p.safetensors"
    code, _, _ = run(capsys, "export", stack_file, "--n", 100, "--block", "16", "--format", "bsr", "-o", path,
                     *(["--masks"] if masks else []))
    assert code == 0
    cp = patternc.compile(str(stack_file), 100, block=16)
    tensors = safetensors.numpy.load_file(path)
    fields = ["indptr", "indices", "full", *(["masks"] if masks else [])]
    assert set(tensors) == {f"layer{l}.head{h}.{f}" for l in range(2) for h in range(2) for f in fields}
    for l in range(2):
        for h in range(2):
            b = cp.to_bsr(l, h, with_masks=masks)
            for f in fields:
                got = tensors[f"layer{l}.head{h}.{f}"]
                assert got.dtype == getattr(b, f).dtype
                np.testing.assert_array_equal(got, getattr(b, f), err_msg=f"layer{l}.head{h}.{f}")
    with safe_open(path, "numpy") as f:
        metadata = f.metadata()
    shape = (metadata["n"], metadata["block"], metadata["layers"], metadata["heads"])
    assert shape == ("100", "16,16", "2", "2")


def test_export_layout_writes_exactly_the_path_given(capsys, tmp_path, stack_file):
    path = tmp_path / "layout.bin"  # np.save would append .npy to a name; we write PATH itself
    code, _, _ = run(capsys, "export", stack_file, "--n", 100, "--format", "layout", "-o", path)
    assert code == 0 and list(tmp_path.glob("layout*")) == [path]
    layout = np.load(path)
    np.testing.assert_array_equal(layout, patternc.compile(str(stack_file), 100).to_dense_blocks())
    assert layout.dtype == np.int64 and layout.shape == (2, 2, 7, 13)


def test_export_dense(capsys, tmp_path, stack_file):
    path = tmp_path / "dense.npy"
    code, _, _ = run(capsys, "export", stack_file, "--n", 50, "--format", "dense", "-o", path)
    assert code == 0
    dense = np.load(path)
    assert dense.dtype == np.bool_ and dense.shape == (2, 2, 50, 50)
    np.testing.assert_array_equal(dense, patternc.compile(str(stack_file), 50).to_dense())


def test_export_dense_of_one_expression_keeps_both_axes(capsys, tmp_path):
    path = tmp_path / "dense.npy"
    assert run(capsys, "export", "causal & window(3)", "--n", 20, "--format", "dense", "-o", path)[0] == 0
    dense = np.load(path)
    assert dense.shape == (1, 1, 20, 20)
    np.testing.assert_array_equal(dense[0, 0].sum(axis=1), np.minimum(np.arange(20) + 1, 3))


@pytest.mark.parametrize("argv, message", [
    pytest.param(["causal", "--n", "32768", "--format", "dense"], "exceeds the limit", id="dense_too_big"),
    pytest.param(["causal & window(16)", "--n", "262144", "--block", "16", "--format", "layout"],
                 "exceeds the limit", id="layout_too_big"),
    pytest.param(["causal", "--n", "64", "--format", "layout", "--masks"], "--masks applies to --format bsr",
                 id="masks_without_bsr"),
    pytest.param(["causal & windw(3)", "--n", "64", "--format", "file"], "unknown primitive 'windw'",
                 id="bad_expression"),
])
def test_bad_exports_exit_2_and_write_nothing(capsys, tmp_path, argv, message):
    path = tmp_path / "out" / "x"
    code, out, err = run(capsys, "export", *argv, "-o", path)
    assert code == 2 and out == ""
    assert message in err and err.startswith("patternc: error:")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--n", "0", "-o", "x.npy"], "argument --n: must be between 1 and 2,147,483,647, got 0",
                 id="bad_n"),
    pytest.param(["--n", "64", "-o", ""], "argument -o/--output: the path is empty", id="empty_output"),
])
def test_bad_options_exit_2_and_write_nothing(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "export", "causal", "--format", "layout", *argv)
    assert code == 2 and out == "" and message in err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "export", "causal", "--n", "64", "--format", "layout", "-o", tmp_path)
    assert code == 2 and "is a directory; give a file path" in err


def test_format_is_required(capsys):
    assert main(["export", "causal", "--n", "64", "-o", "x.npy"]) == 2
    assert "--format" in capsys.readouterr().err


def test_shipped_stack_exports_bsr_with_masks(capsys, tmp_path):
    path = tmp_path / "bigbird.safetensors"
    code, _, _ = run(capsys, "export", ROOT / "conf/pattern/bigbird.yaml", "--n", 256, "--format", "bsr",
                     "--masks", "-o", path)
    assert code == 0
    tensors = safetensors.numpy.load_file(path)
    assert len(tensors) == 12 * 12 * 4
    cp = patternc.compile(str(ROOT / "conf/pattern/bigbird.yaml"), 256)
    np.testing.assert_array_equal(tensors["layer11.head7.masks"], cp.to_bsr(11, 7, with_masks=True).masks)


# ---- docs/exports.md's examples run (at a small n) -----------------------------------------------


def readme_blocks(language):
    text = (ROOT / "docs" / "exports.md").read_text()
    return [block.split("```", 1)[0] for block in text.split(f"```{language}\n")[1:]]


def test_readme_export_commands_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name conf/pattern/... relative to the repository
    lines = [line for block in readme_blocks("bash") for line in block.splitlines()
             if line.startswith("patternc export")]
    assert len(lines) == 7
    for line in lines:
        argv = shlex.split(line.replace("outputs/", f"{tmp_path}/"))[1:]
        argv[argv.index("--n") + 1] = "512"
        code, _, err = run(capsys, *argv)
        assert code == 0, f"{line}\n{err}"
        assert Path(argv[argv.index("-o") + 1]).stat().st_size > 0


def test_readme_python_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("torch.nn.attention.flex_attention")
    monkeypatch.chdir(ROOT)
    code, *consumers = readme_blocks("python")
    for example in consumers:  # FlashInfer, FlashMask, FA4: their libraries need a GPU; valid Python
        compile(example, "docs/exports.md", "exec")
    assert "n = 4096\n" in code
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is not fused
        exec(code.replace("n = 4096\n", "n = 256\n").replace("outputs/", f"{tmp_path}/"), namespace)
    cp, same = namespace["cp"], namespace["same"]
    assert namespace["out"].shape == (1, 12, 256, 64) and namespace["layout"].shape == (12, 12, 2, 2)
    np.testing.assert_array_equal(same.layout(6, 0).indices, cp.layout(6, 0).indices)
