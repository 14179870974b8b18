"""Gradients of the block-sparse kernel against SDPA with the dense mask (float64, rows without a key
zeroed), on every path, with partial and rectangular blocks, n not a multiple of the block,
grouped-query heads, per-head layouts and empty rows; gradcheck in float64 on small cases.

The gradients sum each call's share, computed from the row's combined output and log-sum-exp
(``kernels.call_paths``): a wrong share, a lost merge or a key window added twice shows up here.
"""

from __future__ import annotations

import pathlib

import pytest
import torch
import torch.nn.functional as F
from stacks import per_head_stack

import patternc
from patternc.kernels import block_sparse_attention, call_paths
from patternc.kernels.plan import MASK_SPAN

D = 16

# (spec, n, block, layer, heads, kv_heads): heads None means the pattern's own
CASES = [
    pytest.param("causal & (window(40) | sink(3))", 300, 32, 0, 4, 4, id="issue12_window_sink"),
    pytest.param("causal & (window(37) | global(5))", 200, (32, 64), 0, 2, 2, id="rect_32x64"),
    pytest.param("causal & (window(100) | global(3))", 250, (64, 16), 0, 2, 1, id="rect_64x16_mqa"),
    pytest.param("random(2, seed=5) | diagonals([0])", 300, 64, 0, 2, 2, id="random_ragged"),
    pytest.param(per_head_stack(), 200, (32, 16), 0, None, 2, id="per_head_gqa"),
    pytest.param(per_head_stack(), 200, (16, 32), 1, None, 1, id="per_head_layer1_mqa"),
    pytest.param("causal & window(24)", 130, 16, 0, 6, 3, id="one_head_pattern_gqa"),
    pytest.param("causal & (diagonals([5]) | columns([70]))", 90, 16, 0, 2, 2, id="empty_first_rows"),
    pytest.param("~causal", 100, (16, 32), 0, 2, 1, id="empty_last_row"),
    pytest.param("causal", 16 * (MASK_SPAN + 5) - 3, 16, 0, 1, 1, id="long_full_runs"),
    pytest.param("diagonals([-40, 0, 40]) | sink(8)", 210, 16, 0, 2, 2, id="bands_not_causal"),
    pytest.param("causal & (window(48) | sink(20))", 333, (16, 32), 0, 2, 2, id="band_rows_step2"),
    # gathered keys: dk and dv are scattered back to the tokens each gathered call copied
    pytest.param("causal & (fixed(48, 5) | sink(7) | global(100))", 301, (16, 32), 0, 4, 2,
                 id="fixed_gathered_gqa"),
    pytest.param("causal & fixed(16, 2)", 200, 16, 0, 2, 1, id="fixed_lone_run_gathered_mqa"),
]


def inputs(heads, kv_heads, n, dtype, seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, D, generator=gen)
    k, v = (torch.randn(batch, kv_heads, n, D, generator=gen) for _ in range(2))
    grad = torch.randn(batch, heads, n, D, generator=gen)
    return [x.to(dtype) for x in (q, k, v, grad)]


def dense_grads(q, k, v, grad, cp, layer):
    """SDPA in float64 with the dense mask; a row with no key reads every key and is then zeroed,
    so its output and gradients are 0 (SDPA alone gives NaN there)."""
    mask = torch.from_numpy(cp.to_dense(layer=layer))  # (H or 1, n, n)
    valid = mask.any(-1, keepdim=True)  # (H or 1, n, 1)
    qq, kk, vv = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask | ~valid, enable_gqa=True) * valid
    out.backward(grad.double())
    return out.detach(), qq.grad, kk.grad, vv.grad


def ours(q, k, v, grad, cp, layer, **kwargs):
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = block_sparse_attention(qq, kk, vv, cp, layer, **kwargs)
    out.backward(grad)
    return out.detach(), qq.grad, kk.grad, vv.grad


def compiled(spec, n, block, heads):
    cp = patternc.compile(spec, n, block=block)
    return cp, cp.heads if heads is None else heads


@pytest.mark.parametrize("spec, n, block, layer, heads, kv_heads", CASES)
@pytest.mark.parametrize("path, budget", [("fused", 1 << 24), ("fused", 3000), ("math", 3000)],
                         ids=["fused_one_chunk", "fused_many_chunks", "math_many_chunks"])
def test_float32_gradients_match_dense_sdpa(spec, n, block, layer, heads, kv_heads, path, budget):
    cp, heads = compiled(spec, n, block, heads)
    q, k, v, grad = inputs(heads, kv_heads, n, torch.float32)
    got = ours(q, k, v, grad, cp, layer, path=path, score_budget=budget)
    want = dense_grads(q, k, v, grad, cp, layer)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        error = (a.double() - b).abs().max().item()
        assert error < 1e-4, f"{name}: max abs error {error:.2e}"


@pytest.mark.parametrize("spec, n, block, layer, heads, kv_heads", CASES)
@pytest.mark.parametrize("path", ["fused", "fused_fp32", "bf16", "math"])
def test_bfloat16_gradients_match_dense_sdpa(spec, n, block, layer, heads, kv_heads, path):
    """bfloat16 in, bfloat16 out; each call's gradients are summed in float32 (``fused_fp32``
    computes in float32 throughout). Compared with the
    float64 reference on the same (rounded) inputs: within 2e-2 absolute plus 2e-2 relative, the
    rounding of one or two bfloat16 ulps (a value near 4 has a half-ulp of 1.6e-2)."""
    cp, heads = compiled(spec, n, block, heads)
    q, k, v, grad = inputs(heads, kv_heads, n, torch.bfloat16)
    got = ours(q, k, v, grad, cp, layer, path=path)
    want = dense_grads(q, k, v, grad, cp, layer)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == torch.bfloat16, name
        torch.testing.assert_close(a.double(), b, atol=2e-2, rtol=2e-2, msg=name)


def test_float32_computed_in_bfloat16_when_asked():
    """``path="bf16"`` on float32 inputs: bfloat16 matmuls, float32 results and gradients."""
    cp = patternc.compile("causal & (window(40) | sink(3))", 300, block=32)
    q, k, v, grad = inputs(2, 2, 300, torch.float32)
    got = ours(q, k, v, grad, cp, 0, path="bf16")
    want = dense_grads(q, k, v, grad, cp, 0)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert a.dtype == torch.float32, name
        torch.testing.assert_close(a.double(), b, atol=3e-2, rtol=3e-2, msg=name)
        assert (a.double() - b).abs().max() > 1e-5, name  # it did round: bfloat16, not float32


@pytest.mark.parametrize("path", ["fused", "math"])
@pytest.mark.parametrize("spec, block, heads, kv_heads", [
    pytest.param("causal & (window(7) | sink(2))", (8, 4), 2, 1, id="band_sink_mqa"),
    pytest.param(per_head_stack(), (4, 8), None, 2, id="per_head_gqa"),
    pytest.param("causal & (diagonals([3]) | sink(1))", 4, 1, 1, id="empty_rows"),
])
def test_gradcheck_float64(spec, block, heads, kv_heads, path):
    """Fast mode: the analytic and numerical Jacobians agree along random directions."""
    n = 21  # not a multiple of any block
    cp, heads = compiled(spec, n, block, heads)
    q, k, v, _ = inputs(heads, kv_heads, n, torch.float64, batch=1)
    q, k, v = (x[..., :4].contiguous().requires_grad_() for x in (q, k, v))  # head_dim 4

    def attention(q, k, v):
        return block_sparse_attention(q, k, v, cp, 0, path=path, score_budget=100)  # several chunks

    assert torch.autograd.gradcheck(attention, (q, k, v), atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradcheck_float64_every_entry():
    """The full Jacobian, entry by entry, on the smallest band-and-sink case."""
    cp = patternc.compile("causal & (window(5) | sink(2))", 11, block=4)
    q, k, v, _ = inputs(1, 1, 11, torch.float64, batch=1)
    q, k, v = (x[..., :2].contiguous().requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: block_sparse_attention(q, k, v, cp), (q, k, v))


def test_rows_without_keys_give_zero_output_and_gradient():
    cp = patternc.compile("causal & (diagonals([5]) | columns([70]))", 90, block=16)
    q, k, v, grad = inputs(2, 2, 90, torch.float32)
    out, dq, dk, dv = ours(q, k, v, grad, cp, 0)
    empty = torch.from_numpy(~cp.to_dense(layer=0).any(-1))[0]  # (n,)
    assert empty[:5].all() and empty.sum() >= 5
    assert (out[:, :, empty] == 0).all() and (dq[:, :, empty] == 0).all()
    assert not any(x.isnan().any() for x in (out, dq, dk, dv))


def test_inputs_that_need_no_gradient_get_no_work(monkeypatch):
    """Only q requires grad: the backward asks its calls for dq alone and returns no dk or dv."""
    asked = []
    math_path = call_paths.PATHS["math"]

    def backward(*args):
        asked.append(args[-1])
        return math_path.backward(*args)

    monkeypatch.setitem(call_paths.PATHS, "math", call_paths.Path("math", math_path.forward, backward))
    cp = patternc.compile("causal & window(20)", 64, block=16)
    q, k, v, grad = inputs(2, 2, 64, torch.float32)
    q.requires_grad_()
    out = block_sparse_attention(q, k, v, cp, path="math")
    out.backward(grad)
    assert asked and set(asked) == {(True, False, False)}
    assert k.grad is None and v.grad is None
    torch.testing.assert_close(q.grad, dense_grads(q, k, v, grad, cp, 0)[1].float(), atol=1e-4, rtol=0)


def test_no_gradient_wanted_runs_no_autograd():
    cp = patternc.compile("causal & window(20)", 64, block=16)
    q, k, v, _ = inputs(1, 1, 64, torch.float32)
    assert block_sparse_attention(q, k, v, cp).grad_fn is None
    q.requires_grad_()
    with torch.no_grad():
        assert block_sparse_attention(q, k, v, cp).grad_fn is None
    assert block_sparse_attention(q, k, v, cp).grad_fn is not None


def test_second_derivatives_are_refused_not_wrong():
    cp = patternc.compile("causal & window(20)", 64, block=16)
    q, k, v, grad = inputs(1, 1, 64, torch.float32)
    q.requires_grad_()
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(block_sparse_attention(q, k, v, cp), q, grad, create_graph=True)


def test_readme_kernel_example_runs():
    """The Python example of docs/kernels.md's "The CPU kernel" section trains through the kernel."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "kernels.md").read_text()
    section = text[text.index("## The CPU kernel"):]
    section = section[:section.index("\n## ", 1)]
    (code,) = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    scope: dict = {}
    exec(code, scope)
    assert scope["out"].shape == (1, 8, 1024, 64)
    assert all(scope[x].grad is not None and scope[x].grad.isfinite().all() for x in ("q", "k", "v"))
