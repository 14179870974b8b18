"""patternc.nn: every backend gives SDPA-with-the-dense-mask's output and gradients (forward and
backward), compiles once per length, handles grouped-query heads and rows without keys, and refuses
what does not fit with a clear error. (CUDA's flex backend is checked in benchmarks/gpu_check.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import patternc
from patternc.errors import KernelInputError
from patternc.nn import SparseAttention, sparse_attention

PATTERNS = [
    pytest.param("causal & (window(24) | sink(3))", id="window_sink"),
    pytest.param("causal & fixed(32, 4)", id="fixed"),
    pytest.param("band(1, 9)", id="rows_without_keys"),
    pytest.param("conf/pattern/bigbird.yaml", id="bigbird_stack"),
]


def dense_reference(q, k, v, cp, layer):
    mask = torch.from_numpy(cp.to_dense(layer=layer))  # (H, n, n)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None],
                                         enable_gqa=q.shape[1] != k.shape[1])
    return torch.nan_to_num(out) * mask.any(-1)[None, :, :, None]  # rows without keys give 0


@pytest.mark.parametrize("backend", ["kernel", "sdpa"])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_output_and_gradients_match_the_dense_mask(pattern, backend):
    n = 192
    cp = patternc.compile(pattern, n, block=32)
    heads = cp.heads if cp.heads > 1 else 4
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, n, 16, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    layer = cp.layers - 1
    out = sparse_attention(q, k, v, pattern, layer, block=32, backend=backend)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want = dense_reference(q, k, v, cp, layer)
    want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))
    torch.testing.assert_close(out, want)
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)


def test_grouped_query_heads_read_their_kv_head():
    stack = patternc.Stack("causal & window(8)", heads=4,
                           overrides=(patternc.Override("causal & sink(5)", None, (2, 4)),))
    cp = patternc.compile(stack, 64)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 64, 8, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 64, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(sparse_attention(q, k, v, cp), dense_reference(q, k, v, cp, 0))


def test_a_module_compiles_once_per_length(monkeypatch):
    calls = []
    real = patternc.nn.compile
    monkeypatch.setattr(patternc.nn, "compile", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    patternc.nn._compiled.cache_clear()
    attend = SparseAttention("causal & window(16)")
    for n in (64, 64, 128, 64):
        attend(*(torch.randn(1, 2, n, 8) for _ in range(3)))
    assert calls == [64, 128]


def test_equal_parameters_of_another_type_are_compiled_apart():
    """10**16 == 1e16, but ``$w + 3 - $w`` is 3 for the int and 4 for the float: the per-length cache
    must not serve one's layout to the other."""
    x = torch.randn(1, 1, 64, 8, generator=torch.Generator().manual_seed(2))
    patternc.nn._compiled.cache_clear()
    sparse_attention(x, x, x, "causal & window($w + 3 - $w)", params={"w": 10**16}, backend="sdpa")
    got = sparse_attention(x, x, x, "causal & window($w + 3 - $w)", params={"w": 1e16}, backend="sdpa")
    torch.testing.assert_close(got, sparse_attention(x, x, x, "causal & window(4)", backend="sdpa"))


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda x: sparse_attention(x, x, x, "causal", backend="magic"), "backend must be one of",
                 id="backend"),
    pytest.param(lambda x: sparse_attention(x.requires_grad_(), x, x, "causal", backend="flex"),
                 "FlexAttention has no backward on CPU", id="flex_training_on_cpu"),
    pytest.param(lambda x: sparse_attention(x, x, x, patternc.compile("causal", 32)), "compiled for n = 32",
                 id="wrong_length"),
    pytest.param(lambda x: sparse_attention(x, x, x, 42), "pattern must be", id="not_a_pattern"),
    pytest.param(lambda x: sparse_attention(x[0], x[0], x[0], "causal"), r"q must be 4-d \(batch, heads",
                 id="3d"),
    pytest.param(lambda x: sparse_attention(x, x, x, "causal", layer=3, backend="sdpa"), "layer 3 is outside",
                 id="layer"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(patternc.PatternError, match=message):
        call(torch.randn(1, 2, 64, 8))


def _three(q=(1, 2, 64, 8), k=(1, 2, 64, 8), v=None, dtype=torch.float32):
    return torch.randn(*q), torch.randn(*k, dtype=dtype), torch.randn(*(v or k))


ROWS = torch.tensor([3, 9])
THREE_HEADS = patternc.Stack("causal & window(4)", heads=3)


@pytest.mark.parametrize("make, kwargs, message", [
    pytest.param(lambda: _three(k=(2, 64, 8), v=(2, 64, 8)), {}, r"k must be 4-d .* got 3-d", id="sdpa_k_3d"),
    pytest.param(lambda: _three(k=(1, 2, 32, 8)), {}, "k has length 32 but q has 64", id="sdpa_k_length"),
    pytest.param(lambda: _three(k=(1, 2, 64, 4), v=(1, 2, 64, 8)), {}, "k has head_dim 4 but q has 8",
                 id="sdpa_k_head_dim"),
    pytest.param(lambda: _three(dtype=torch.float64), {}, "k has dtype float64 but q has float32",
                 id="sdpa_dtypes"),
    pytest.param(lambda: (torch.ones(1, 2, 64, 8, dtype=torch.long),) * 3, {}, "q has dtype int64",
                 id="sdpa_int"),
    pytest.param(lambda: (torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8, device="meta"),
                          torch.randn(1, 2, 64, 8)), {}, "k is on meta but q is on cpu", id="sdpa_device"),
    pytest.param(lambda: _three(k=(1, 3, 64, 8)), {}, "q has 2 heads and k has 3", id="sdpa_groups"),
    pytest.param(lambda: _three(k=(2, 2, 64, 8)), {}, "k has batch 2 but q has batch 1", id="sdpa_batch"),
    pytest.param(lambda: _three(), {"pattern": THREE_HEADS}, "q has 2 heads but the pattern has 3",
                 id="sdpa_pattern_heads"),
    pytest.param(lambda: _three(q=(1, 2, 2, 8), k=(2, 64, 8), v=(2, 64, 8)), {"rows": ROWS},
                 r"k must be 4-d .* got 3-d", id="rows_k_3d"),
    pytest.param(lambda: _three(q=(1, 2, 2, 8), k=(1, 2, 64, 8), v=(1, 2, 60, 8)), {"rows": ROWS},
                 "v has length 60 but k has 64", id="rows_v_length"),
    pytest.param(lambda: _three(q=(1, 2, 2, 4), k=(1, 2, 64, 8)), {"rows": ROWS},
                 "k has head_dim 8 but q has 4", id="rows_head_dim"),
    pytest.param(lambda: _three(q=(1, 2, 2, 8), dtype=torch.float64), {"rows": ROWS},
                 "k has dtype float64 but q has float32", id="rows_dtypes"),
    pytest.param(lambda: _three(q=(2, 2, 2, 8)), {"rows": ROWS}, "k has batch 1 but q has batch 2",
                 id="rows_batch"),
    pytest.param(lambda: _three(q=(1, 2, 2, 8)), {"rows": ROWS, "pattern": THREE_HEADS},
                 "q has 2 heads but the pattern has 3", id="rows_pattern_heads"),
])
def test_bad_tensors_name_the_argument_on_every_path(make, kwargs, message):
    """The sdpa and rows= paths check q, k and v as the kernel does, before any work: never torch's
    own error, never a 3-d k broadcast over the batch."""
    q, k, v = make()
    kwargs = {"pattern": "causal & window(4)", **kwargs}
    with pytest.raises(KernelInputError, match=f"sparse_attention: {message}"):
        sparse_attention(q, k, v, backend="sdpa", **kwargs)


def test_rows_give_the_full_outputs_at_those_positions():
    """Queries at a few positions (a row without keys among them), grouped-query heads, any backend."""
    cp = patternc.compile("diagonals([1, 2])", n=64, block=16)  # q - k in {1, 2}: row 0 has no key
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 4, 64, 8, generator=gen)
    k, v = (torch.randn(2, 2, 64, 8, generator=gen) for _ in range(2))
    rows = torch.tensor([0, 5, 63])
    full = sparse_attention(q, k, v, cp, backend="sdpa")[:, :, rows]
    for backend in ("kernel", "sdpa"):
        part = sparse_attention(q[:, :, rows], k, v, cp, backend=backend, rows=rows)
        torch.testing.assert_close(part, full, atol=1e-6, rtol=1e-6)
    assert (part[:, :, 0] == 0).all()


@pytest.mark.parametrize("rows, message", [
    (torch.tensor([[1, 2]]), "rows must be a 1-D integer tensor of q's 2 positions"),
    (torch.tensor([1.0, 2.0]), "rows must be a 1-D integer tensor"),
    (torch.tensor([1, 64]), r"rows must lie in \[0, 64\), got values from 1 to 64"),
])
def test_bad_rows_are_refused(rows, message):
    q = torch.randn(1, 1, 2, 8)
    k = v = torch.randn(1, 1, 64, 8)
    with pytest.raises(KernelInputError, match=message):
        sparse_attention(q, k, v, "causal", rows=rows)
