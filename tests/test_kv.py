"""KV-cache retention against a brute-force scan of the dense mask, pinned budgets, the terms that
keep keys forever, and a decode loop that evicts on the schedule and gives the full cache's output.

The oracle is the definition in docs/language.md: the keys held when query t is computed are
``{k <= t : some t' >= t allows (t', k)}``; the budget is the largest count over t.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patternc
from patternc.kv_analysis import last_reads, live_keys
from tests.test_lowering_oracle import _expression


def oracle(dense: np.ndarray) -> tuple[np.ndarray, int]:
    """(last reader per key or -1, budget) straight from an (n, n) causal mask."""
    n = len(dense)
    last = np.where(dense.any(axis=0), n - 1 - np.argmax(dense[::-1], axis=0), -1)
    live = [int(dense[t:, : t + 1].any(axis=0).sum()) for t in range(n)]  # k <= t read at or after t
    return last, max(live, default=0)


CASES = [
    pytest.param("causal", id="causal"),
    pytest.param("causal & window(7)", id="window"),
    pytest.param("causal & (window(5) | sink(3))", id="window_sink"),
    pytest.param("causal & (window(4) | stride(6))", id="stride"),
    pytest.param("causal & dilated(3, 4)", id="dilated"),
    pytest.param("causal & fixed(8, 2)", id="fixed"),
    pytest.param("causal & chunk(9)", id="chunk"),
    pytest.param("causal & (global(2) | window(3))", id="global"),
    pytest.param("causal & (columns([3, 20]) | band(0, 2))", id="columns"),
    pytest.param("causal & tokens([5, 31])", id="tokens"),
    pytest.param("causal & diagonals([0, 3, 11])", id="diagonals"),
    pytest.param("causal & (prefix(10) | window(2))", id="prefix"),
    pytest.param("causal & (random(2, seed=3) | window(2))", id="random"),
    pytest.param("causal & neighborhood([6, 8], [3, 3])", id="neighborhood"),
    pytest.param("causal & window(6) - diagonals([1])", id="difference"),
    pytest.param("band(1, 4)", id="empty_rows"),
]


@pytest.mark.parametrize("block", [(4, 4), (8, 16), (5, 3), (64, 64)], ids=["4x4", "8x16", "5x3", "gt_n"])
@pytest.mark.parametrize("expr", CASES)
def test_retention_matches_the_dense_scan(expr, block):
    cp = patternc.compile(expr, n=50, block=block)
    want_last, want_budget = oracle(cp.to_dense(0, 0))
    got = last_reads(cp.node(), cp.layout())
    np.testing.assert_array_equal(got, want_last)
    assert live_keys(got)[0] == want_budget
    report = patternc.kv(cp)
    assert report.max_live_keys == ((want_budget,),)
    bq, bk = cp.block
    blocks = -(-50 // bk)
    latest = [max(want_last[j * bk:(j + 1) * bk]) for j in range(blocks)]
    np.testing.assert_array_equal(report.schedule(0, 0), [x // bq if x >= 0 else -1 for x in latest])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_compositions_under_causal_match_the_scan(data):
    n = data.draw(st.integers(1, 60), label="n")
    bq = data.draw(st.sampled_from([1, 2, 3, 4, 8, 16]), label="bq")
    bk = data.draw(st.sampled_from([1, 2, 3, 5, 8, 16]), label="bk")
    text, _ = _expression(data.draw, n, bq, bk, depth=3)
    cp = patternc.compile(f"causal & ({text})", n, block=(bq, bk))
    want_last, want_budget = oracle(cp.to_dense(0, 0))
    np.testing.assert_array_equal(last_reads(cp.node(), cp.layout()), want_last)
    assert patternc.kv(cp).max_live_keys[0][0] == want_budget


def test_window_and_sinks_need_exactly_their_keys_at_128k():
    report = patternc.kv(patternc.compile("causal & (window(4096) | sink(64))", n=131072))
    assert report.max_live_keys == ((4160,),)
    assert report.forever == ((("sink(64)",),),)
    assert report.dense_bytes == 131072 * 2 * 128 * 2
    assert report.bytes == 4160 * 2 * 128 * 2


@pytest.mark.parametrize("expr, forever", [
    pytest.param("causal & (window(256) | stride(128))", ("stride(128)",), id="stride"),
    pytest.param("causal & window(256)", (), id="window"),
    pytest.param("causal", ("causal",), id="dense"),
    pytest.param("causal & (window(64) | global(4))", ("global(4)",), id="global"),
    pytest.param("causal & (chunk(512) | columns([7]))", ("columns([7])",), id="columns"),
    pytest.param("causal & fixed(256, 8)", ("fixed's summary columns (the last 8 of every 256)",),
                 id="fixed"),
    pytest.param("causal & dilated(8, 16)", (), id="dilated"),
    pytest.param("causal & neighborhood([64, 64], [5, 5])", (), id="neighborhood"),
])
def test_the_terms_that_keep_keys_forever(expr, forever):
    report = patternc.kv(patternc.compile(expr, n=4096))
    assert report.forever[0][0] == forever
    schedule = report.schedule(0, 0)  # a key block well before the end is read by the last query block
    assert bool((schedule[:-4] == 4096 // 128 - 1).any()) == bool(forever)


def test_heads_of_a_kv_group_share_one_cache():
    stack = patternc.Stack("causal & window(8)", heads=4,
                           overrides=(patternc.Override("causal & (window(2) | sink(3))", None, (1, 2)),))
    cp = patternc.compile(stack, n=64, block=8)
    mha, gqa = patternc.kv(cp), patternc.kv(cp, kv_heads=2)
    assert mha.max_live_keys == ((8, 5, 8, 8),)
    dense = cp.to_dense(0)  # (H, n, n): the group of heads 0 and 1 keeps the union
    assert gqa.max_live_keys == ((oracle(dense[0] | dense[1])[1], 8),)
    assert gqa.dense_bytes * 2 == mha.dense_bytes


CAUSAL = patternc.compile("causal", n=64)


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: patternc.kv(patternc.compile("window(8)", n=64)), "not causal", id="not_causal"),
    pytest.param(lambda: patternc.kv(CAUSAL, kv_heads=3), "must divide", id="groups"),
    pytest.param(lambda: patternc.kv(CAUSAL, head_dim=0), "head_dim", id="head_dim"),
    pytest.param(lambda: patternc.kv(CAUSAL, dtype="int4"), "dtype", id="dtype"),
    pytest.param(lambda: patternc.kv("causal"), "takes a CompiledPattern", id="not_compiled"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(patternc.PatternError, match=message):
        call()


@pytest.mark.parametrize("expr", ["causal & (window(6) | sink(2))", "causal & (window(3) | stride(5))",
                                  "causal & fixed(8, 2)", "causal & (random(1, seed=2) | window(2))"])
def test_a_decode_loop_that_evicts_on_the_schedule_gives_the_full_caches_output(expr):
    n, d = 40, 8
    cp = patternc.compile(expr, n=n, block=4)
    mask = torch.from_numpy(cp.to_dense(0, 0))
    last = torch.from_numpy(patternc.kv(cp).last_reads(0, 0))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    cache: list[int] = []  # positions held; a key leaves once its last reader is done
    budget = patternc.kv(cp).max_live_keys[0][0]
    for t in range(n):
        cache.append(t)
        held = torch.tensor(cache)
        allowed = mask[t, held]
        scores = (q[t] @ k[held].T).masked_fill(~allowed, float("-inf"))
        out = torch.softmax(scores, -1) @ v[held] if allowed.any() else torch.zeros(d, dtype=q.dtype)
        full = mask[t, : t + 1]
        want = torch.softmax((q[t] @ k[: t + 1].T).masked_fill(~full, float("-inf")), -1) @ v[: t + 1]
        torch.testing.assert_close(out, want if full.any() else torch.zeros(d, dtype=q.dtype))
        cache = [p for p in cache if last[p] > t]  # evict what no later query reads
        assert len(cache) <= budget


def test_the_command_prints_budgets_bytes_and_what_keeps_keys(capsys):
    from patternc.cli import main

    assert main(["kv", "causal & (window(4096) | sink(64))", "--n", "131072", "--dtype", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "keys per KV head 4,160; kept to the end by sink(64)" in out
    assert f"KV cache: {4160 * 2 * 128 * 4:,} bytes" in out
    assert main(["kv", "conf/pattern/longformer.yaml", "--n", "4096", "--kv-heads", "4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kv_heads"] == 4 and len(data["max_live_keys"]) == 12 and len(data["max_live_keys"][0]) == 4
    assert data["forever"][0][0] == ["global(16)"] and data["bytes"] < data["dense_bytes"]


@pytest.mark.parametrize("argv, message", [
    pytest.param(["kv", "window(8)", "--n", "64"], "not causal", id="not_causal"),
    pytest.param(["kv", "causal", "--n", "64", "--kv-heads", "0"], "argument --kv-heads", id="kv_heads"),
    pytest.param(["kv", "conf/pattern/longformer.yaml", "--n", "64", "--kv-heads", "5"], "must divide",
                 id="kv_heads_divide"),
])
def test_the_command_refuses_bad_input(capsys, argv, message):
    from patternc.cli import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_stacks_kv_heads_are_the_default(tmp_path, capsys):
    """A stack that declares kv_heads is costed with them, by kv() and the command alike: each KV
    head keeps the union of its query heads' keys, not one cache per query head."""
    from patternc.cli import main

    path = tmp_path / "gqa.yaml"
    path.write_text("layers: 1\nheads: 8\nkv_heads: 2\nblock: 64\ndefault: causal & window(64 * (h + 1))\n")
    report = patternc.kv(patternc.compile(str(path), n=4096))
    assert report.kv_heads == 2 and report.max_live_keys == ((256, 512),)  # heads 0-3 and 4-7, unions
    assert main(["kv", str(path), "--n", "4096", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "2 KV heads" in out and "keys per KV head 256, 512" in out
    assert f"KV cache: {(256 + 512) * 2 * 128 * 2:,} bytes" in out
