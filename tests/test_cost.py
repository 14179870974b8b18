"""``patternc.measure``: the on-disk cache (hits run nothing, other keys miss, a corrupt file is
rewritten). No timing is asserted: times only have to be positive."""

from __future__ import annotations

import json
import types

import pytest
import torch

import patternc
import patternc.kernels

N = 256


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PATTERNC_CACHE_DIR", str(tmp_path / "cost"))
    return tmp_path / "cost"


def quick(cp, **kw):
    return patternc.measure(cp, head_dim=16, repeats=2, warmup=1, **kw)


def cp_of(expr="causal & window(40)", block=32):
    return patternc.compile(expr, N, block=block)


def forbid_kernels(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a cache hit ran a kernel")

    monkeypatch.setattr(patternc.kernels, "prepare", boom)
    monkeypatch.setattr(patternc.kernels, "causal_sdpa", boom)


def test_result_is_positive_and_recorded(cache):
    m = quick(cp_of(), dtype=torch.float32)
    assert m.seconds > 0 and m.baseline_seconds > 0
    assert m.ratio > 0
    assert (m.backend, m.n, m.block, m.dtype, m.heads) == ("kernel", N, (32, 32), "float32", 1)
    assert m.threads == torch.get_num_threads()
    assert len(list(cache.glob("*.json"))) == 1


def test_kernel_and_baseline_take_turns(monkeypatch):
    """On a fake clock the kernel takes 1 s and the baseline 4 s, except during a burst of load
    that triples both: they run in turns (order flipped each repeat) and the ratio stays 1/4."""
    now = [0.0]
    order = []
    warm = 4  # two warm-up turns of each
    burst = {4, 5, 6, 7}  # timed calls 4..7 (repeats 2 and 3) run 3x slower

    def runner(name, seconds):
        def run(q, k, v):
            order.append(name)
            now[0] += seconds * (3 if len(order) - 1 - warm in burst else 1)

        return run

    monkeypatch.setattr(patternc.kernels, "prepare", lambda *a, **kw: runner("ours", 1.0))
    monkeypatch.setattr(patternc.kernels, "causal_sdpa", runner("sdpa", 4.0))
    monkeypatch.setattr(patternc.cost, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    m = patternc.measure(cp_of(), head_dim=16, repeats=5, warmup=2, cache=False)
    assert order[warm:] == ["ours", "sdpa", "sdpa", "ours", "ours", "sdpa", "sdpa", "ours", "ours", "sdpa"]
    assert (m.seconds, m.baseline_seconds, m.ratio) == (1.0, 4.0, 0.25)


def fake_clock(monkeypatch, ours, theirs):
    """The kernel's and the baseline's n-th run take ``ours(n)`` and ``theirs(n)`` seconds (n counts
    every run, warm-up included); returns the list of runs."""
    now, order = [0.0], []

    def runner(name, seconds):
        def run(q, k, v):
            order.append(name)
            now[0] += seconds(sum(o == name for o in order) - 1)

        return run

    monkeypatch.setattr(patternc.kernels, "prepare", lambda *a, **kw: runner("ours", ours))
    monkeypatch.setattr(patternc.kernels, "causal_sdpa", runner("sdpa", theirs))
    monkeypatch.setattr(patternc.cost, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return order


def test_the_spread_is_recorded_stored_and_returned(cache, monkeypatch):
    """Ratios 0.2, 0.4, 0.2, 0.4, ...: the quartiles of the repeats' ratios come with the median."""
    fake_clock(monkeypatch, lambda i: 1.0 if i % 2 else 0.5, lambda i: 2.5)
    m = patternc.measure(cp_of(), head_dim=16, repeats=4, warmup=0)
    assert (m.ratio_low, m.ratio, m.ratio_high) == pytest.approx((0.2, 0.3, 0.4))
    assert m.spread == pytest.approx(0.2 / 0.3) and m.rounds == patternc.cost.MAX_ROUNDS
    (path,) = cache.glob("*.json")
    stored = json.loads(path.read_text())
    assert [stored[k] for k in ("ratio_low", "ratio_high", "rounds")] == [m.ratio_low, m.ratio_high, m.rounds]
    forbid_kernels(monkeypatch)
    assert patternc.measure(cp_of(), head_dim=16, repeats=4, warmup=0) == m  # a hit returns it


def test_a_wide_spread_is_measured_again_and_a_narrow_one_is_not(monkeypatch):
    """The first batch of repeats is noisy (every other kernel run 3x slower), the second is quiet:
    one more batch narrows the spread and stops; a machine noisy throughout stops at MAX_ROUNDS."""
    order = fake_clock(monkeypatch, lambda i: 3.0 if i < 5 and i % 2 else 1.0, lambda i: 4.0)
    m = patternc.measure(cp_of(), head_dim=16, repeats=5, warmup=1, cache=False)
    assert m.rounds == 2 and order.count("ours") == 1 + 2 * 5
    assert m.ratio == 0.25 and m.spread <= patternc.cost.MAX_SPREAD
    order = fake_clock(monkeypatch, lambda i: 1.0, lambda i: 4.0)
    assert patternc.measure(cp_of(), head_dim=16, repeats=5, warmup=1, cache=False).rounds == 1
    order = fake_clock(monkeypatch, lambda i: 3.0 if i % 2 else 1.0, lambda i: 4.0)
    assert patternc.measure(cp_of(), head_dim=16, repeats=5, warmup=1, cache=False).rounds == 3
    assert order.count("ours") == 1 + 3 * 5  # bounded: never a hang


def test_short_runs_are_repeated_within_one_timed_repeat(monkeypatch):
    """Runs of 2 ms: each repeat times 10 of them (MIN_REPEAT_SECONDS 20 ms), the result per run."""
    order = fake_clock(monkeypatch, lambda i: 0.002, lambda i: 0.004)
    m = patternc.measure(cp_of(), head_dim=16, repeats=3, warmup=1, cache=False)
    assert m.calls_per_repeat == 10 and order.count("ours") == 1 + 3 * 10
    assert m.seconds == pytest.approx(0.002) and m.ratio == pytest.approx(0.5)


def test_cache_hit_returns_identical_result_without_running(monkeypatch):
    first = quick(cp_of())
    forbid_kernels(monkeypatch)
    assert quick(cp_of()) == first


@pytest.mark.parametrize("change", [
    pytest.param(dict(expr="causal & window(80)"), id="layout"),
    pytest.param(dict(block=16), id="block"),
    pytest.param(dict(dtype=torch.float32), id="dtype"),
    pytest.param(dict(batch=2), id="batch"),
    pytest.param(dict(backend="sdpa"), id="backend"),
])
def test_other_keys_miss(cache, change):
    quick(cp_of())
    change = dict(change)
    cp = cp_of(change.pop("expr", "causal & window(40)"), change.pop("block", 32))
    quick(cp, **change)
    assert len(list(cache.glob("*.json"))) == 2


def test_a_new_kernels_revision_measures_afresh(cache, monkeypatch):
    """A result measured on older kernels is not read back once they change."""
    quick(cp_of())
    monkeypatch.setattr(patternc.cost, "KERNELS_REVISION", patternc.cost.KERNELS_REVISION + 1)
    again = quick(cp_of())
    assert again.kernels == patternc.cost.KERNELS_REVISION
    assert len(list(cache.glob("*.json"))) == 2


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"seconds": 1}), "[1, 2]"],
                         ids=["empty", "truncated", "missing_fields", "wrong_type"])
def test_corrupt_cache_file_is_ignored_and_rewritten(cache, content):
    first = quick(cp_of())
    (path,) = cache.glob("*.json")
    path.write_text(content)
    again = quick(cp_of())
    assert again.seconds > 0 and again.layout_hash == first.layout_hash
    assert json.loads(path.read_text())["seconds"] == again.seconds


def test_layout_hash_depends_on_layout():
    first = cp_of()
    patternc.compiled.clear_cache()  # a second compile: equal layouts, not one object hashed twice
    again = cp_of()
    assert first is not again
    assert patternc.cost.layout_hash(first, 0) == patternc.cost.layout_hash(again, 0)
    assert patternc.cost.layout_hash(first, 0) != patternc.cost.layout_hash(cp_of(block=16), 0)
    # the same number of blocks elsewhere: the hash reads where the blocks are, not how many
    shifted = patternc.compile("causal & (window(32) | sink(32))", N, block=32)
    assert first.stats().at(0, 0).nnz == shifted.stats().at(0, 0).nnz
    assert patternc.cost.layout_hash(first, 0) != patternc.cost.layout_hash(shifted, 0)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match=r"measure\(\): backend must be one of auto, kernel, flex, sdpa"):
        quick(cp_of(), backend="nope")
    stack = patternc.Stack(default="causal & window(8 * (h + 1))", heads=2)
    with pytest.raises(ValueError, match="the pattern has 2 heads"):
        quick(patternc.compile(stack, N, block=32), heads=3)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device, message", [
    pytest.param("tpu", "is not a torch device", id="unknown"),
    pytest.param("cuda:x", "is not a torch device", id="bad-index"),
    pytest.param("meta", "run on cpu or cuda only", id="meta"),
])
def test_bad_devices_are_refused(device, message):
    with pytest.raises(ValueError, match=message):
        quick(cp_of(), device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        quick(cp_of(), device="cuda")


def test_cpu_result_names_its_device(cache):
    assert quick(cp_of()).device == "cpu"


@CUDA
@pytest.mark.parametrize("backend", ["kernel", "flex", "sdpa"])
def test_cuda_measure_times_on_the_gpu_and_keys_the_cache_by_it(cache, backend):
    cp = cp_of(block=128)  # FlexAttention's CUDA tiles
    cpu = quick(cp)
    gpu = quick(cp, backend=backend, device="cuda")
    assert gpu.device.startswith("cuda: ") and gpu.seconds > 0 and gpu.baseline_seconds > 0
    assert len(list(cache.glob("*.json"))) == 2 and cpu.device == "cpu"
    assert quick(cp, backend=backend, device="cuda") == gpu  # a hit


@CUDA
def test_cuda_flex_refuses_blocks_its_kernel_cannot_tile():
    with pytest.raises(ValueError, match="multiples of 128"):
        quick(cp_of(block=32), backend="flex", device="cuda")


def test_decode_phase_times_one_step_and_is_cached_apart(cache, monkeypatch):
    """phase="decode": one step at position context over the pattern's cache, against dense decode;
    cached under its own key (a prefill figure is never returned for it), context in the result."""
    import patternc.kernels.decode

    cp = patternc.compile(patternc.Stack("causal & (sink(4) | window(40))", heads=2, kv_heads=1), N, block=32)
    prefill = quick(cp, dtype=torch.float32)
    step = quick(cp, dtype=torch.float32, phase="decode")
    assert (step.phase, step.context, prefill.phase, prefill.context) == ("decode", N - 1, "prefill", None)
    assert step.seconds > 0 and step.baseline_seconds > 0 and step.heads == 2
    assert quick(cp, dtype=torch.float32, phase="decode", context=100).context == 100
    assert len(list(cache.glob("*.json"))) == 3

    def boom(*args, **kwargs):
        raise AssertionError("a cache hit ran a kernel")

    monkeypatch.setattr(patternc.kernels.decode, "DecodeCache", boom)
    assert quick(cp, dtype=torch.float32, phase="decode") == step


@pytest.mark.parametrize("kw, message", [
    pytest.param(dict(phase="generate"), "phase must be one of prefill, decode", id="phase"),
    pytest.param(dict(phase="decode", context=N), "context must be an integer in [0, n) = [0, 256)",
                 id="context-past-n"),
    pytest.param(dict(context=3), "context is the decode step's position; pass phase='decode'", id="prefill"),
    pytest.param(dict(phase="decode", backend="sdpa"), "runs our decode kernel (backend='kernel')",
                 id="backend"),
])
def test_bad_decode_requests_are_refused(kw, message):
    with pytest.raises(patternc.PatternMeaningError) as error:
        quick(cp_of(), **kw)
    assert message in str(error.value)
