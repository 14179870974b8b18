"""What the block-sparse kernel refuses (before any work) and what it survives: bad shapes, dtypes
and devices, and NaN or inf in keys, values and queries.

Masked keys are inert (DESIGN, "Masked keys are inert"): a key the pattern does not allow for a
row has no effect on that row's output or gradients, whatever its value; a NaN or inf the row is
allowed to read propagates as in SDPA.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stacks import per_head_stack

import patternc
from patternc.errors import PatternSizeError
from patternc.kernels import PATH_ENV, KernelInputError, block_sparse_attention, call_paths, reference

N, D = 64, 16


def tensors(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape).to(dtype=dtype, device=device)


def good(heads=4, kv_heads=4):
    return tensors(2, heads, N, D), tensors(2, kv_heads, N, D), tensors(2, kv_heads, N, D)


BAD = [
    pytest.param(lambda q, k, v: (q[0], k, v), "q must be 4-d (batch, heads, n, head_dim), got 3-d",
                 id="q_3d"),
    pytest.param(lambda q, k, v: (q, k[..., None], v), "k must be 4-d", id="k_5d"),
    pytest.param(lambda q, k, v: (q, k, v.numpy()), "v must be a torch.Tensor, got ndarray", id="v_numpy"),
    pytest.param(lambda q, k, v: (q[:0], k[:0], v[:0]), "batch, heads and head_dim must be at least 1",
                 id="batch_0"),
    pytest.param(lambda q, k, v: (q[:, :0], k[:, :0], v[:, :0]), "must be at least 1", id="heads_0"),
    pytest.param(lambda q, k, v: (q, k[:1], v[:1]), "k has batch 1 but q has batch 2", id="k_batch"),
    pytest.param(lambda q, k, v: (q, k[:, :3], v[:, :3]), "q has 4 heads and k has 3: q's heads must be "
                 "a multiple of k's", id="kv_heads_not_dividing"),
    pytest.param(lambda q, k, v: (q, k[:, :2], v[:, :1]), "v has 1 heads but k has 2", id="v_heads"),
    pytest.param(lambda q, k, v: (q[:, :2], k[:, :2], v[:, :2]), "q has 2 heads but the pattern has 4",
                 id="pattern_heads"),
    pytest.param(lambda q, k, v: (q[:, :, :60], k[:, :, :60], v[:, :, :60]),
                 "q has length 60 but the pattern was compiled for n = 64", id="n"),
    pytest.param(lambda q, k, v: (q, k[:, :, :32], v), "k has length 32 but q has 64", id="k_length"),
    pytest.param(lambda q, k, v: (q, k, v[:, :, 1:]), "v has length 63 but q has 64", id="v_length"),
    pytest.param(lambda q, k, v: (q, k[..., :8], v), "k has head_dim 8 but q has 16", id="k_head_dim"),
    pytest.param(lambda q, k, v: (q, k, v[..., :8]), "v has head_dim 8 but q has 16: this kernel needs "
                 "one head_dim", id="v_head_dim"),
    pytest.param(lambda q, k, v: (q, k.half(), v.half()), "k has dtype float16 but q has float32",
                 id="dtypes_differ"),
    pytest.param(lambda q, k, v: (q.long(), k.long(), v.long()), "q has dtype int64; block_sparse_attention "
                 "takes float32, float64, bfloat16, float16", id="int_dtype"),
    pytest.param(lambda q, k, v: (q, k.to("meta"), v), "k is on meta but q is on cpu", id="k_on_meta"),
    pytest.param(lambda q, k, v: (q.to("meta"), k.to("meta"), v.to("meta")), "meta tensors, which hold "
                 "no values", id="all_meta"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_tensors_are_refused_before_any_work(change, message, monkeypatch):
    def no_work(*args):
        raise AssertionError("the kernel ran before the inputs were checked")

    monkeypatch.setattr(reference, "_forward", no_work)
    cp = patternc.compile(per_head_stack(), N, block=16)
    with pytest.raises(KernelInputError) as caught:
        block_sparse_attention(*change(*good()), cp)
    assert message in str(caught.value)
    assert str(caught.value).startswith("block_sparse_attention: ")


@pytest.mark.parametrize("kwargs, message", [
    pytest.param(dict(scale=math.nan), "scale must be a finite number, got nan", id="scale_nan"),
    pytest.param(dict(scale="0.1"), "scale must be a finite number, got '0.1'", id="scale_str"),
    pytest.param(dict(score_budget=0), "score_budget must be a positive int, got 0", id="budget_0"),
    pytest.param(dict(path="fast"), "path is 'fast', not a compute path; choose from auto, fused, "
                 "fused_fp32, bf16, math", id="path"),
])
def test_bad_settings_are_refused(kwargs, message):
    cp = patternc.compile("causal & window(20)", N, block=16)
    with pytest.raises(KernelInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        block_sparse_attention(*good(1, 1), cp, **kwargs)


def test_a_pattern_that_is_not_compiled_is_refused():
    with pytest.raises(KernelInputError, match=r"cp must be a compiled pattern .*, got str"):
        block_sparse_attention(*good(1, 1), "causal & window(20)")


def test_bad_path_in_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv(PATH_ENV, "turbo")
    cp = patternc.compile("causal & window(20)", N, block=16)
    with pytest.raises(KernelInputError, match=r"\$PATTERNC_KERNEL_PATH is 'turbo', not a compute path"):
        block_sparse_attention(*good(1, 1), cp)


def test_bad_layer_is_refused():
    cp = patternc.compile("causal", N, block=16)
    with pytest.raises(PatternSizeError, match=r"layer 3 is outside this stack of 1 layers"):
        block_sparse_attention(*good(1, 1), cp, layer=3)


def test_float16_is_computed_in_float32_and_comes_back_in_float16():
    cp = patternc.compile("causal & (window(20) | sink(3))", N, block=16)
    q, k, v = (x.half().requires_grad_() for x in good(1, 1))
    out = block_sparse_attention(q, k, v, cp)
    out.float().sum().backward()
    assert out.dtype == q.grad.dtype == k.grad.dtype == torch.float16
    ref = block_sparse_attention(*(x.detach().float() for x in (q, k, v)), cp)
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


# ---- masked keys are inert -------------------------------------------------------------------------

SPECS = [  # (spec, n, block, poisoned token)
    pytest.param("causal & window(20)", N, 16, 37, id="window_partial_diagonal"),
    pytest.param("causal & (window(24) | sink(5))", N, (16, 32), 37, id="band_sink_rect"),
    pytest.param("stride(7) | sink(3)", N, 16, 37, id="stride_not_causal"),
    # rows that read the poisoned key (window) also read a partial column call that does not hold
    # it: their NaN must not reach that call's keys 4..8, which they may not read
    pytest.param("causal & (window(20) | columns([3, 9]))", 128, 16, 100, id="window_columns"),
]


def reads(cp) -> torch.Tensor:
    return torch.from_numpy(cp.to_dense(layer=0))[0]  # (n, n): row q reads key k


def run(q, k, v, cp, path, grad=None):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = block_sparse_attention(q, k, v, cp, path=path)
    out.backward(torch.ones_like(out) if grad is None else grad)
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("spec, n, block, bad", SPECS)
@pytest.mark.parametrize("where", ["k", "v"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("path", ["fused", "bf16", "math"])
def test_a_masked_key_is_inert_whatever_its_value(spec, n, block, bad, where, value, path):
    """Rows that may not read the poisoned token give what they give when token 37 is harmless (up to
    rounding: their call now runs on the ``math`` path); rows that may read it are non-finite where
    SDPA is."""
    cp = patternc.compile(spec, n, block=block)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, n, D, generator=gen) for _ in range(3))
    poisoned = {"k": k.clone(), "v": v.clone()}
    poisoned[where][:, :, bad, :3] = value
    clean = run(q, k, v, cp, path)
    dirty = run(q, poisoned["k"], poisoned["v"], cp, path)
    allowed = reads(cp)
    blind = ~allowed[:, bad]  # rows that may not read the poisoned key
    assert blind.any() and (~blind).any()
    # a partial block holds the key for some blind rows: where the leak used to happen
    bk = cp.block[1]
    blind_in_block = blind & allowed[:, (bad // bk) * bk:(bad // bk + 1) * bk].any(-1)
    assert blind_in_block.any()
    untouched = ~allowed[~blind].any(0)  # keys that no row reading the poisoned key reads
    for name, c, d, rows in (("out", clean[0], dirty[0], blind), ("dq", clean[1], dirty[1], blind),
                             ("dk", clean[2], dirty[2], untouched), ("dv", clean[3], dirty[3], untouched)):
        tolerance = 3e-2 if path == "bf16" else 1e-5
        torch.testing.assert_close(d[:, :, rows], c[:, :, rows], atol=tolerance, rtol=tolerance, msg=name)
    sdpa = F.scaled_dot_product_attention(q.double(), poisoned["k"].double(), poisoned["v"].double(),
                                          attn_mask=allowed)
    seen = ~blind
    np.testing.assert_array_equal(dirty[0][:, :, seen].isfinite().numpy(),
                                  sdpa[:, :, seen].isfinite().numpy())


@pytest.mark.parametrize("path", ["fused", "math"])
def test_a_nan_query_or_gradient_touches_its_own_row_only(path):
    cp = patternc.compile("causal & (window(20) | sink(3))", N, block=16)
    gen = torch.Generator().manual_seed(2)
    q, k, v, grad = (torch.randn(1, 1, N, D, generator=gen) for _ in range(4))
    bad_q, bad_grad = q.clone(), grad.clone()
    bad_q[:, :, 30, 0] = math.nan
    bad_grad[:, :, 40, 0] = math.nan
    clean = run(q, k, v, cp, path, grad)
    dirty = run(bad_q, k, v, cp, path, bad_grad)
    allowed = reads(cp)
    rows = torch.ones(N, dtype=torch.bool)
    rows[[30, 40]] = False
    keys = ~allowed[[30, 40]].any(0)  # keys that neither poisoned row reads
    torch.testing.assert_close(dirty[0][:, :, rows], clean[0][:, :, rows], atol=1e-5, rtol=1e-5)
    assert dirty[0][:, :, 30].isnan().all() and dirty[0][:, :, 40].isfinite().all()
    torch.testing.assert_close(dirty[1][:, :, rows], clean[1][:, :, rows], atol=1e-5, rtol=1e-5)
    for c, d in ((clean[2], dirty[2]), (clean[3], dirty[3])):
        torch.testing.assert_close(d[:, :, keys], c[:, :, keys], atol=1e-5, rtol=1e-5)


def test_only_calls_with_partial_blocks_and_bad_values_leave_the_chosen_path(monkeypatch):
    """FULL runs stay on the fast path when a key is NaN; finite inputs never reach ``math``."""
    used = []
    for name, path in list(call_paths.PATHS.items()):
        def forward(*args, _name=name, _path=path):
            used.append((_name, args[3].allowed is None))
            return _path.forward(*args)

        monkeypatch.setitem(call_paths.PATHS, name, call_paths.Path(name, forward, path.backward))
    cp = patternc.compile("causal & (window(400) | sink(16))", 1024, block=16)  # long FULL runs
    q, k, v = (torch.randn(1, 1, 1024, D) for _ in range(3))
    block_sparse_attention(q, k, v, cp, path="fused")
    assert {name for name, _ in used} == {"fused"}
    used.clear()
    k[:, :, 500] = math.nan
    block_sparse_attention(q, k, v, cp, path="fused")
    assert ("fused", True) in used  # FULL calls, NaN or not
    assert ("math", False) in used and ("math", True) not in used  # only masked calls move


def test_infinite_inputs_finish():
    cp = patternc.compile("causal & (window(64) | sink(4))", 512, block=32)
    q, k, v = (torch.full((1, 2, 512, D), math.inf) for _ in range(3))
    k[..., ::2, :] = -math.inf
    out = block_sparse_attention(q, k, v, cp)
    assert out.shape == q.shape and not out.isfinite().any()


def test_flex_refuses_to_train_on_cpu_and_says_what_to_use():
    """FlexAttention has no backward on CPU: every caller of compiled_flex (patternc.nn, patternc.hf's flex
    backend, the benchmarks) gets a KernelInputError naming the kernel that trains there, not torch's
    NotImplementedError from inside the compiled graph."""
    from patternc.kernels import compiled_flex

    cp = patternc.compile("causal & window(16)", n=128, block=64)
    q = torch.randn(1, 1, 128, 16, requires_grad=True)
    with pytest.raises(KernelInputError, match=r"FlexAttention has no backward on CPU.*block-sparse kernel"):
        compiled_flex()(q, q, q, block_mask=cp.to_block_mask(0))
