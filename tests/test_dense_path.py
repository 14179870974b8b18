"""Never slower than dense: ``attend`` runs a whole sequence as one masked SDPA call where this
machine's cost model (``kernels.dense_path``, measured once per CPU, threads, torch, head size,
dtype and revision, cached on disk) says the block walk would take longer; both are exact."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import patternc
from patternc.kernels import attend, dense_path, reference

SPEC = "causal & (window(24) | sink(4)) & ~diagonals([0])"  # query 0 sees no key: output 0


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path))
    dense_path._cached.cache_clear()
    yield tmp_path
    dense_path._cached.cache_clear()


def model(per_call: float, per_dense_score: float = 1e-9) -> dense_path.WalkModel:
    return dense_path.WalkModel(per_score=1e-9, per_call=per_call, per_dense_score=per_dense_score,
                                head_dim=16, dtype="float32", threads=torch.get_num_threads(),
                                torch_version=torch.__version__, cpu="test cpu")


def inputs(n=160, heads=2, kv_heads=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, n, 16, generator=gen)
    k, v = (torch.randn(1, kv_heads, n, 16, generator=gen) for _ in range(2))
    return q, k, v


def oracle(q, k, v, cp):
    mask = torch.from_numpy(cp.to_dense(layer=0))  # (1, n, n)
    valid = mask.any(-1, keepdim=True)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~valid, enable_gqa=True)
    return out * valid


@pytest.fixture
def walks(monkeypatch):
    """How many times the block walk ran."""
    count = []
    forward = reference._forward
    monkeypatch.setattr(reference, "_forward", lambda *a: count.append(1) or forward(*a))
    return count


@pytest.mark.parametrize("per_call, dense", [(1.0, True), (0.0, False)], ids=["calls_cost", "calls_free"])
def test_the_cheaper_path_runs_and_both_are_exact(per_call, dense, monkeypatch, walks):
    monkeypatch.setattr(dense_path, "measure_walk", lambda head_dim, dtype: model(per_call))
    cp = patternc.compile(SPEC, n=160, block=16)
    q, k, v = inputs()
    out = attend(q, k, v, cp, backend="kernel")
    assert (len(walks) == 0) == dense
    torch.testing.assert_close(out, oracle(q, k, v, cp), atol=1e-5, rtol=1e-5)
    assert (out[:, :, 0] == 0).all()  # the row with no key: 0, on either path


def test_the_walk_runs_where_dense_cannot_be_exact_or_would_not_be_cheaper(monkeypatch, walks):
    monkeypatch.setattr(dense_path, "measure_walk", lambda head_dim, dtype: model(1.0))
    cp = patternc.compile(SPEC, n=160, block=16)
    q, k, v = inputs()
    attend(*(x.clone().requires_grad_() for x in (q, k, v)), cp, backend="kernel")  # gradients
    k[0, 0, 5] = float("nan")  # a key some rows may not read: the walk keeps it inert
    attend(q, k, v, cp, backend="kernel")
    assert len(walks) == 2
    causal = patternc.compile("causal", n=160, block=16)  # SDPA's causal kernel beats any mask
    torch.testing.assert_close(attend(q, k.nan_to_num(), v, causal), oracle(q, k.nan_to_num(), v, causal))
    assert len(walks) == 2


def test_the_model_is_measured_once_per_machine_and_kept_on_disk(cache, monkeypatch):
    timed = []
    monkeypatch.setattr(dense_path, "_timed",
                        lambda **s: timed.append(s) or dataclasses.replace(model(1e-4), **s))
    first = dense_path.measure_walk(16, torch.float32)
    dense_path._cached.cache_clear()  # a new process: read from disk
    assert dense_path.measure_walk(16, torch.float32) == first and len(timed) == 1
    (stored,) = (cache / "kernel-dense").iterdir()
    assert json.loads(stored.read_text())["revision"] == dense_path.REVISION
    # another CPU, thread count or head size is another file; the first is not read for it
    monkeypatch.setattr(dense_path, "cpu_model", lambda: "another cpu")
    dense_path._cached.cache_clear()
    assert dense_path.measure_walk(16, torch.float32).cpu == "another cpu" and len(timed) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert dense_path.measure_walk(16, torch.float32).threads == threads + 1 and len(timed) == 3
    finally:
        torch.set_num_threads(threads)


def test_a_model_of_another_revision_or_hand_edited_is_measured_again(cache, monkeypatch):
    monkeypatch.setattr(dense_path, "_timed", lambda **s: dataclasses.replace(model(2e-4), **s))
    dense_path.measure_walk(16, torch.float32)
    (stored,) = (cache / "kernel-dense").iterdir()
    for edit in ({"revision": dense_path.REVISION - 1}, {"per_call": -1.0}, {"cpu": "elsewhere"}):
        stored.write_text(json.dumps({**json.loads(stored.read_text()), **edit}))
        dense_path._cached.cache_clear()
        monkeypatch.setattr(dense_path, "_timed", lambda **s: dataclasses.replace(model(3e-4), **s))
        assert dense_path.measure_walk(16, torch.float32).per_call == 3e-4  # measured afresh
        monkeypatch.setattr(dense_path, "_timed", lambda **s: dataclasses.replace(model(2e-4), **s))


def test_the_probe_fits_positive_constants():
    m = dense_path.measure_walk(16, torch.float32, cache=False)
    assert m.per_score > 0 and m.per_call >= 0 and m.per_dense_score > 0
    assert m.cpu == dense_path.cpu_model() and m.threads == torch.get_num_threads()
