"""How the kernel chooses its compute path: the argument, then ``$PATTERNC_KERNEL_PATH``, then a
one-off measurement per machine (cached on disk under ``$PATTERNC_CACHE_DIR``)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import patternc
from patternc.kernels import PATH_ENV, PathTimes, block_sparse_attention, measure_paths, paths, resolve_paths

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # resolving never touches the device


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(PATH_ENV, raising=False)
    paths._cached.cache_clear()
    yield tmp_path
    paths._cached.cache_clear()


def times(forward: str, backward: str) -> PathTimes:
    """A measurement in which ``forward`` and ``backward`` are the fastest candidates."""
    return PathTimes(forward_seconds={name: 0.5 if name == forward else 1.0 for name in paths.CANDIDATES},
                     backward_seconds={name: 0.5 if name == backward else 1.0 for name in paths.CANDIDATES},
                     head_dim=64, threads=torch.get_num_threads(), torch_version=torch.__version__,
                     cpu="test cpu")


BF16, FP32 = torch.bfloat16, torch.float32


@pytest.mark.parametrize("path, dtype, device, expected", [
    pytest.param("fused", FP32, CPU, ("fused", "fused", FP32, FP32), id="fused"),
    pytest.param("fused", BF16, CPU, ("fused", "fused", BF16, BF16), id="fused_bf16"),
    pytest.param("fused_fp32", BF16, CPU, ("fused_fp32", "fused_fp32", FP32, FP32), id="fused_fp32"),
    pytest.param("fused", BF16, CUDA, ("math", "math", BF16, BF16), id="fused_is_cpu_only"),
    pytest.param("fused_fp32", BF16, CUDA, ("math", "math", BF16, BF16), id="fused_fp32_is_cpu_only"),
    pytest.param("bf16", FP32, CPU, ("bf16", "bf16", BF16, BF16), id="bf16_opt_in"),
    pytest.param("bf16", FP32, CUDA, ("bf16", "bf16", BF16, BF16), id="bf16_anywhere"),
    pytest.param("math", torch.float64, CPU, ("math", "math", torch.float64, torch.float64), id="math"),
    pytest.param("auto", FP32, CPU, ("fused", "fused", FP32, FP32), id="auto_float32"),
    pytest.param("auto", torch.float64, CPU, ("fused", "fused", torch.float64, torch.float64),
                 id="auto_float64"),
    pytest.param("auto", torch.float16, CPU, ("fused_fp32", "fused_fp32", FP32, FP32), id="auto_float16"),
    pytest.param("auto", torch.float16, CUDA, ("math", "math", torch.float16, torch.float16),
                 id="auto_off_cpu"),
])
def test_resolve(path, dtype, device, expected):
    assert dataclasses.astuple(resolve_paths(path, dtype, device, 64)) == expected


def test_auto_bfloat16_takes_the_measured_choice_for_each_direction(monkeypatch):
    monkeypatch.setattr(paths, "measure_paths", lambda head_dim: times("bf16", "fused_fp32"))
    chosen = resolve_paths("auto", BF16, CPU, 64)
    assert dataclasses.astuple(chosen) == ("bf16", "fused_fp32", BF16, FP32)
    monkeypatch.setattr(paths, "measure_paths", lambda head_dim: times("fused", "bf16"))
    assert resolve_paths(None, BF16, CPU, 64).backward == "bf16"


def test_a_narrow_win_keeps_sdpas_kernel():
    seconds = {"fused": 1.0, "fused_fp32": 0.95, "bf16": 0.99}
    narrow = dataclasses.replace(times("fused", "fused"), forward_seconds=seconds,
                                 backward_seconds={**seconds, "bf16": 0.5})
    assert (narrow.forward, narrow.backward) == ("fused", "bf16")


def test_argument_beats_environment_beats_auto(monkeypatch):
    monkeypatch.setattr(paths, "measure_paths", lambda head_dim: times("bf16", "bf16"))
    assert resolve_paths(None, torch.bfloat16, CPU, 64).forward == "bf16"
    monkeypatch.setenv(PATH_ENV, "math")
    assert resolve_paths(None, torch.bfloat16, CPU, 64).forward == "math"
    assert resolve_paths("fused", torch.bfloat16, CPU, 64).forward == "fused"
    monkeypatch.setenv(PATH_ENV, "bf16")
    assert resolve_paths(None, FP32, CPU, 64).forward_work == BF16  # opt-in by environment


def test_the_measurement_is_real_cached_on_disk_and_read_back(cache, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: a busy CI machine does not stretch it
    try:
        first = measure_paths(16)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the key it was stored under
    for seconds in (first.forward_seconds, first.backward_seconds):
        assert set(seconds) == set(paths.CANDIDATES) and min(seconds.values()) > 0
    assert first.forward in paths.CANDIDATES and first.backward in paths.CANDIDATES
    assert (first.head_dim, first.threads, first.torch_version) == (16, 1, torch.__version__)
    (stored,) = cache.glob("kernel-paths/*.json")
    assert PathTimes(**json.loads(stored.read_text())) == first
    paths._cached.cache_clear()  # a new process: the file answers, nothing is timed

    def no_timing(**settings):
        raise AssertionError("measured again although the cache holds the answer")

    monkeypatch.setattr(paths, "_timed", no_timing)
    assert measure_paths(16) == first
    assert measure_paths(16) is measure_paths(16)  # and once per process


def test_a_damaged_or_foreign_cache_file_is_measured_again(cache, monkeypatch):
    calls = []

    def fake_timed(**settings):
        calls.append(settings)
        return dataclasses.replace(times("fused", "fused"), **settings)

    monkeypatch.setattr(paths, "_timed", fake_timed)
    measure_paths(32)
    (stored,) = cache.glob("kernel-paths/*.json")
    for damage in ("{not json", json.dumps({**json.loads(stored.read_text()), "cpu": "another cpu"})):
        stored.write_text(damage)
        paths._cached.cache_clear()
        assert measure_paths(32).cpu != "another cpu"
    assert len(calls) == 3
    assert measure_paths(32, cache=False).forward == "fused" and len(calls) == 4


def test_mixed_paths_train_correctly(monkeypatch):
    """A bf16 forward with a fused backward, the reverse, or a float32 backward after a bfloat16
    forward still give SDPA's gradients."""
    cp = patternc.compile("causal & (window(40) | sink(3))", 300, block=32)
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(1, 2, 300, 16, generator=gen).bfloat16() for _ in range(4))
    mask = torch.from_numpy(cp.to_dense(layer=0))
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    torch.nn.functional.scaled_dot_product_attention(*ref, attn_mask=mask).backward(grad.double())
    for choice in (("bf16", "fused"), ("fused", "bf16"), ("fused", "fused_fp32")):
        monkeypatch.setattr(paths, "measure_paths", lambda head_dim, choice=choice: times(*choice))
        ours = [x.clone().requires_grad_() for x in (q, k, v)]
        block_sparse_attention(*ours, cp).backward(grad)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a.grad.double(), b.grad, atol=3e-2, rtol=3e-2)
