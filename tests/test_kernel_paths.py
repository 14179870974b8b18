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
    return PathTimes(fused_forward=1.0, bf16_forward=0.5 if forward == "bf16" else 2.0,
                     fused_backward=1.0, bf16_backward=0.5 if backward == "bf16" else 2.0,
                     head_dim=64, threads=torch.get_num_threads(), torch_version=torch.__version__,
                     cpu="test cpu")


@pytest.mark.parametrize("path, dtype, device, expected", [
    pytest.param("fused", torch.float32, CPU, ("fused", "fused", torch.float32), id="fused"),
    pytest.param("fused", torch.float16, CPU, ("fused", "fused", torch.float32), id="float16_in_float32"),
    pytest.param("fused", torch.bfloat16, CUDA, ("math", "math", torch.bfloat16), id="fused_is_cpu_only"),
    pytest.param("bf16", torch.float32, CPU, ("bf16", "bf16", torch.bfloat16), id="bf16_opt_in"),
    pytest.param("math", torch.float64, CPU, ("math", "math", torch.float64), id="math"),
    pytest.param("auto", torch.float32, CPU, ("fused", "fused", torch.float32), id="auto_float32"),
    pytest.param("auto", torch.float64, CPU, ("fused", "fused", torch.float64), id="auto_float64"),
    pytest.param("auto", torch.float16, CUDA, ("math", "math", torch.float16), id="auto_off_cpu"),
])
def test_resolve(path, dtype, device, expected):
    assert dataclasses.astuple(resolve_paths(path, dtype, device, 64)) == expected


def test_auto_bfloat16_takes_the_measured_choice_for_each_direction(monkeypatch):
    monkeypatch.setattr(paths, "measure_paths", lambda head_dim: times("bf16", "fused"))
    chosen = resolve_paths("auto", torch.bfloat16, CPU, 64)
    assert (chosen.forward, chosen.backward, chosen.work) == ("bf16", "fused", torch.bfloat16)
    monkeypatch.setattr(paths, "measure_paths", lambda head_dim: times("fused", "bf16"))
    assert resolve_paths(None, torch.bfloat16, CPU, 64).backward == "bf16"


def test_argument_beats_environment_beats_auto(monkeypatch):
    monkeypatch.setattr(paths, "measure_paths", lambda head_dim: times("bf16", "bf16"))
    assert resolve_paths(None, torch.bfloat16, CPU, 64).forward == "bf16"
    monkeypatch.setenv(PATH_ENV, "math")
    assert resolve_paths(None, torch.bfloat16, CPU, 64).forward == "math"
    assert resolve_paths("fused", torch.bfloat16, CPU, 64).forward == "fused"
    monkeypatch.setenv(PATH_ENV, "bf16")
    assert resolve_paths(None, torch.float32, CPU, 64).work == torch.bfloat16  # opt-in by environment


def test_the_measurement_is_real_cached_on_disk_and_read_back(cache, monkeypatch):
    first = measure_paths(16)
    assert min(first.fused_forward, first.bf16_forward, first.fused_backward, first.bf16_backward) > 0
    assert first.forward in ("fused", "bf16") and first.backward in ("fused", "bf16")
    assert (first.head_dim, first.threads, first.torch_version) == (16, torch.get_num_threads(),
                                                                     torch.__version__)
    (stored,) = cache.glob("kernel-paths-*.json")
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
        return PathTimes(1.0, 2.0, 1.0, 2.0, **settings)

    monkeypatch.setattr(paths, "_timed", fake_timed)
    measure_paths(32)
    (stored,) = cache.glob("kernel-paths-*.json")
    for damage in ("{not json", json.dumps({**json.loads(stored.read_text()), "cpu": "another cpu"})):
        stored.write_text(damage)
        paths._cached.cache_clear()
        assert measure_paths(32).cpu != "another cpu"
    assert len(calls) == 3
    assert measure_paths(32, cache=False).fused_forward == 1.0 and len(calls) == 4


def test_mixed_paths_train_correctly(monkeypatch):
    """A bf16 forward with a fused backward (or the reverse) still gives SDPA's gradients."""
    cp = patternc.compile("causal & (window(40) | sink(3))", 300, block=32)
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(1, 2, 300, 16, generator=gen).bfloat16() for _ in range(4))
    mask = torch.from_numpy(cp.to_dense(layer=0))
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    torch.nn.functional.scaled_dot_product_attention(*ref, attn_mask=mask).backward(grad.double())
    for choice in (("bf16", "fused"), ("fused", "bf16")):
        monkeypatch.setattr(paths, "measure_paths", lambda head_dim, choice=choice: times(*choice))
        ours = [x.clone().requires_grad_() for x in (q, k, v)]
        block_sparse_attention(*ours, cp).backward(grad)
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a.grad.double(), b.grad, atol=3e-2, rtol=3e-2)
