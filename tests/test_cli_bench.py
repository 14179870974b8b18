"""``patternc bench`` at a tiny size: it prints the latency, the baseline and the ratio; bad input
exits with status 2 and a clear error."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from patternc.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path / "cost"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


TINY = ("--n", 128, "--block", 32, "--head-dim", 16, "--repeats", 2, "--warmup", 1)


@pytest.mark.parametrize("backend", ["kernel", "sdpa"])
def test_bench_prints_latency_baseline_and_ratio(capsys, backend):
    code, out, err = run(capsys, "bench", "causal & window(40)", *TINY, "--backend", backend,
                         "--dtype", "fp32")
    assert code == 0, err
    assert f"{backend}: " in out and "dense causal sdpa: " in out and "ratio: " in out
    assert "float32" in out


def test_bench_a_decode_step(capsys):
    code, out, err = run(capsys, "bench", "causal & (sink(4) | window(40))", *TINY, "--backend", "kernel",
                         "--dtype", "fp32", "--phase", "decode", "--context", 100)
    assert code == 0, err
    assert "decode step at position 100 (101 keys cached densely)" in out
    assert "decode kernel: " in out and "dense sdpa decode: " in out and "ratio: " in out


def test_bench_decode_refuses_a_context_past_n(capsys):
    code, _, err = run(capsys, "bench", "causal & window(40)", *TINY, "--backend", "kernel",
                       "--phase", "decode", "--context", 128)
    assert code == 2 and "context must be an integer in [0, n) = [0, 128)" in err


@pytest.mark.parametrize("argv, message", [
    pytest.param(("--layer", 3), "--layer 3 is outside this stack of 1 layers", id="layer"),
    pytest.param(("--head-dim", 0), "argument --head-dim: must be between 1 and 1,024, got 0", id="head_dim"),
    pytest.param(("--heads", 0), "argument --heads: must be between 1 and 1,024, got 0", id="heads"),
    pytest.param(("--set", "w=1"), "unknown parameter 'w'", id="param"),
])
def test_bench_bad_input_exits_2(capsys, argv, message):
    code, out, err = run(capsys, "bench", "causal & window(40)", *TINY, "--backend", "kernel", *argv)
    assert code == 2 and message in err and out == ""


def test_bench_bad_pattern_exits_2(capsys):
    code, _, err = run(capsys, "bench", "causal & windo(40)", *TINY, "--backend", "kernel")
    assert code == 2 and "patternc: error:" in err


def test_bench_unknown_backend_is_an_argparse_error(capsys):
    assert main(["bench", "causal", "--n", "64", "--backend", "nope"]) == 2


README_BENCH = [line for line in (ROOT / "docs" / "kernels.md").read_text().splitlines()  # its bash block
                if line.startswith("patternc bench")]


@pytest.mark.parametrize("line", README_BENCH)
def test_readme_bench_commands_run(capsys, line):
    argv = shlex.split(line)[1:]
    argv[argv.index("--n") + 1] = "256"
    gpu = "--device" in argv and argv[argv.index("--device") + 1].startswith("cuda")
    if gpu:
        argv[argv.index("--n") + 1] = "512"  # FlexAttention on CUDA needs whole 128-token blocks
    code, out, err = run(capsys, *argv, "--head-dim", 16, "--repeats", 1, "--warmup", 0)
    if gpu and not torch.cuda.is_available():  # the GPU line still says clearly why it cannot run
        assert code == 2 and "no CUDA GPU" in err
        return
    assert code == 0, err
    assert "ratio: " in out


def test_the_readme_shows_a_cpu_and_a_gpu_bench():
    assert len(README_BENCH) == 2 and "--device cuda" in README_BENCH[1]
