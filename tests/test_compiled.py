"""``CompiledPattern`` as a user meets it: compiling every kind of spec, reading layouts, dense
masks, statistics, errors, and handing ``mask_mod`` to FlexAttention."""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pytest
import yaml

import patternc

ROOT = pathlib.Path(__file__).resolve().parents[1]
STACK_FILES = sorted((ROOT / "conf" / "pattern").glob("*.yaml"))


def assert_well_formed(cp, layer=0, head=0):
    indptr, indices, full = cp.layout(layer, head)
    nbq, nbk = cp.grid.nbq, cp.grid.nbk
    assert (indptr.dtype, indices.dtype, full.dtype) == (np.int32, np.int32, np.bool_)
    assert indptr.shape == (nbq + 1,) and indptr[0] == 0 and indptr[-1] == len(indices) == len(full)
    assert np.all(np.diff(indptr) >= 0)
    for i in range(nbq):
        row = indices[indptr[i]: indptr[i + 1]]
        assert np.all(np.diff(row) > 0), f"row {i} not sorted and unique: {row}"
    if len(indices):
        assert indices.min() >= 0 and indices.max() < nbk


# ---- what compile accepts ------------------------------------------------------------------------


def test_compile_from_text():
    cp = patternc.compile("causal & window(8)", 100, block=16)
    assert (cp.n, cp.block, cp.layers, cp.heads) == (100, (16, 16), 1, 1)
    assert (cp.grid.nbq, cp.grid.nbk) == (7, 7)
    assert cp.expression() == "causal & window(8)"
    assert_well_formed(cp)


def test_compile_from_an_ast_equals_text():
    text = "causal & (window(8) | global(3)) - diagonals([2])"
    a = patternc.compile(patternc.parse(text), 77, block=(8, 4))
    b = patternc.compile(text, 77, block=(8, 4))
    for x, y in zip(a.layout(), b.layout(), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("block, want", [
    pytest.param(None, (128, 128), id="default"),
    pytest.param(32, (32, 32), id="int"),
    pytest.param((16, 64), (16, 64), id="pair"),
    pytest.param([8, 4], (8, 4), id="list"),
])
def test_block_forms(block, want):
    assert patternc.compile("causal", 300, block=block).block == want


def test_numpy_integer_n_is_accepted():
    assert patternc.compile("causal", np.int64(50), block=8).n == 50


def test_compile_a_stack_with_overrides_and_per_head_expressions():
    stack = patternc.Stack(default="causal & window(4 * 2**h)", layers=2, heads=3,
                           overrides=(patternc.Override(expr="causal & window(8)", heads=(1, 3)),))
    cp = patternc.compile(stack, 64, block=4)
    assert (cp.layers, cp.heads) == (2, 3)
    assert cp.expression(1, 0) == "causal & window(4 * 2**h)"
    assert cp.expression(1, 2) == "causal & window(8)"
    dense = cp.to_dense()
    for l in range(2):
        assert_well_formed(cp, l, 0)
        np.testing.assert_array_equal(dense[l, 0].sum(axis=1), np.minimum(np.arange(64) + 1, 4))
        np.testing.assert_array_equal(dense[l, 1], dense[l, 2])
        np.testing.assert_array_equal(dense[l, 1].sum(axis=1), np.minimum(np.arange(64) + 1, 8))


def test_per_head_and_per_layer_expressions_differ():
    stack = patternc.Stack(default="causal & window(4 * 2**h + 16 * l)", layers=2, heads=3)
    cp = patternc.compile(stack, 128, block=4)  # windows 4, 8, 16 and 20, 24, 32: block multiples
    layouts = {(l, h): tuple(a.tobytes() for a in cp.layout(l, h))
               for l in range(2) for h in range(3)}
    assert len(set(layouts.values())) == 6
    assert cp.node(1, 2) != cp.node(0, 2)


def test_heads_with_the_same_bound_expression_share_a_layout():
    # window(min(h, 1) * 8 + 8) is window(8) at head 0 and window(16) at heads 1 and 2
    stack = patternc.Stack(default="causal & window(min(h, 1) * 8 + 8)", layers=2, heads=3,
                           overrides=(patternc.Override(expr="causal & window(8)", layers=(1, 2),
                                                        heads=(2, 3)),))
    cp = patternc.compile(stack, 96, block=8)
    assert cp.node(0, 1) == cp.node(0, 2) == cp.node(1, 1)
    assert cp.node(0, 0) == cp.node(1, 2) != cp.node(0, 1)
    for (a, b) in [((0, 1), (0, 2)), ((0, 1), (1, 1)), ((0, 0), (1, 2))]:
        for x, y in zip(cp.layout(*a), cp.layout(*b), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(cp.layout(0, 0).indices, cp.layout(0, 1).indices)
    stats = cp.stats().per_head
    assert [(s.layer, s.head) for s in stats] == [(l, h) for l in range(2) for h in range(3)]
    assert stats[1].allowed_pairs == stats[2].allowed_pairs != stats[0].allowed_pairs


@pytest.mark.parametrize("n", [256, 4096])
@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in STACK_FILES])
def test_every_stack_file_compiles(path, n):
    spec = yaml.safe_load(path.read_text())
    cp = patternc.compile(str(path), n)
    block = spec["block"] if isinstance(spec["block"], list) else [spec["block"]] * 2
    assert (cp.layers, cp.heads, cp.block) == (spec["layers"], spec["heads"], tuple(block))
    s = cp.stats()
    assert len(s.per_head) == cp.layers * cp.heads
    assert s.causal == spec.get("causal", s.causal)
    for h in s.per_head:
        assert h.allowed_pairs > 0 and h.waste_blocks == 0
    assert_well_formed(cp, cp.layers - 1, cp.heads - 1)
    json.dumps(s.to_dict())


def test_stack_file_as_path_object():
    path = ROOT / "conf" / "pattern" / "sliding_window.yaml"
    a, b = patternc.compile(path, 1024), patternc.compile(str(path), 1024)
    assert a.expression(3, 2) == b.expression(3, 2) == "causal & window($w)"
    np.testing.assert_array_equal(a.layout(3, 2).indices, b.layout(3, 2).indices)


def test_params_override_a_stack_files_defaults():
    path = str(ROOT / "conf" / "pattern" / "sliding_window.yaml")
    cp = patternc.compile(path, 1024, params={"w": 64})
    assert cp.stats().per_head[0].allowed_pairs == int(np.minimum(np.arange(1024) + 1, 64).sum())


def test_stack_file_overrides_apply_where_written():
    cp = patternc.compile(str(ROOT / "conf" / "pattern" / "sparse_transformer_strided.yaml"), 4096)
    assert cp.expression(0, 3) == "causal & window(round(sqrt(n)))"
    assert cp.expression(0, 4) == "causal & stride(round(sqrt(n)))"
    assert cp.node(0, 4) == patternc.compile("causal & stride(64)", 4096).node()


# ---- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["causal & window(8)", "none", "all", "random(2, seed=3)",
                                  "~causal | tokens([40])"])
def test_layouts_are_read_only_and_well_formed(expr):
    cp = patternc.compile(expr, 70, block=(8, 16))
    assert_well_formed(cp)
    for array in cp.layout():
        with pytest.raises(ValueError):
            array[...] = 0


def test_empty_pattern_stores_nothing():
    indptr, indices, full = patternc.compile("none", 70, block=8).layout()
    assert len(indices) == len(full) == 0 and np.all(indptr == 0)


# ---- dense masks ---------------------------------------------------------------------------------


def test_to_dense_shapes():
    stack = patternc.Stack(default="causal & window(2 + h + l)", layers=2, heads=3)
    cp = patternc.compile(stack, 20, block=4)
    full = cp.to_dense()
    assert full.shape == (2, 3, 20, 20) and full.dtype == np.bool_
    assert cp.to_dense(layer=1).shape == (3, 20, 20)
    assert cp.to_dense(head=2).shape == (2, 20, 20)
    assert cp.to_dense(1, 2).shape == (20, 20)
    np.testing.assert_array_equal(cp.to_dense(layer=1), full[1])
    np.testing.assert_array_equal(cp.to_dense(head=2), full[:, 2])
    np.testing.assert_array_equal(cp.to_dense(1, 2), full[1, 2])
    np.testing.assert_array_equal(full[1, 2].sum(axis=1), np.minimum(np.arange(20) + 1, 5))


def test_to_dense_refuses_above_the_limit():
    cp = patternc.compile("causal", 2**15)  # 2**30 booleans: refused before allocating anything
    with pytest.raises(patternc.PatternSizeError, match="exceeds the limit"):
        cp.to_dense()
    small = patternc.compile("causal", 100, block=16)
    with pytest.raises(patternc.PatternSizeError, match="max_elements"):
        small.to_dense(0, 0, max_elements=100 * 100 - 1)
    assert small.to_dense(0, 0, max_elements=100 * 100).shape == (100, 100)
    stack = patternc.compile(patternc.Stack(default="causal", layers=2, heads=2), 10, block=4)
    with pytest.raises(patternc.PatternSizeError):
        stack.to_dense(max_elements=2 * 2 * 100 - 1)
    assert stack.to_dense(layer=0, max_elements=2 * 100).shape == (2, 10, 10)


@pytest.mark.parametrize("call", [
    pytest.param(lambda cp: cp.layout(2, 0), id="layout_layer"),
    pytest.param(lambda cp: cp.layout(0, 3), id="layout_head"),
    pytest.param(lambda cp: cp.layout(-1, 0), id="layout_negative"),
    pytest.param(lambda cp: cp.to_dense(2, 0), id="to_dense_layer"),
    pytest.param(lambda cp: cp.to_dense(head=3), id="to_dense_head"),
    pytest.param(lambda cp: cp.allows(0, 0, layer=0, head=5), id="allows_head"),
    pytest.param(lambda cp: cp.node(5, 0), id="node"),
    pytest.param(lambda cp: cp.expression(0, -1), id="expression"),
    pytest.param(lambda cp: cp.mask_mod(2, 0), id="mask_mod"),
])
def test_out_of_range_layer_or_head(call):
    cp = patternc.compile(patternc.Stack(default="causal", layers=2, heads=3), 16, block=4)
    with pytest.raises(patternc.PatternSizeError, match="outside this stack"):
        call(cp)


@pytest.mark.parametrize("q, k", [
    pytest.param(-1, 0, id="q_negative"),
    pytest.param(0, 16, id="k_is_n"),
    pytest.param([0, 16], 3, id="q_array"),
    pytest.param(3, [[0], [-2]], id="k_array"),
])
def test_allows_refuses_positions_outside_the_sequence(q, k):
    cp = patternc.compile("all", 16, block=4)
    with pytest.raises(patternc.PatternSizeError, match=r"\[0, 16\)"):
        cp.allows(q, k)


def test_allows_broadcasts_and_matches_dense():
    cp = patternc.compile("causal & (window(5) | global(2))", 30, block=(4, 8))
    m = cp.to_dense(0, 0)
    assert cp.allows(7, 3).shape == () and bool(cp.allows(7, 3)) == m[7, 3]
    np.testing.assert_array_equal(cp.allows(np.arange(30)[:, None], np.arange(30)), m)
    np.testing.assert_array_equal(cp.allows([], []), np.zeros(0, bool))


# ---- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [
    pytest.param(0, id="zero"),
    pytest.param(-5, id="negative"),
    pytest.param(1.5, id="float"),
    pytest.param(64.0, id="integral_float"),
    pytest.param("64", id="string"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="none"),
    pytest.param(2**31, id="past_int32"),
])
def test_bad_n(n):
    with pytest.raises(patternc.PatternError, match="n must be an integer"):
        patternc.compile("causal", n)


@pytest.mark.parametrize("block, message", [
    pytest.param(0, "positive integer", id="zero"),
    pytest.param(-16, "positive integer", id="negative"),
    pytest.param(2.5, "positive integer", id="float"),
    pytest.param(True, "positive integer", id="bool"),
    pytest.param((16, 0), "positive integer", id="pair_zero"),
    pytest.param((16, 16, 16), r"one size or \[bq, bk\]", id="triple"),
    pytest.param("sixteen", "block must be", id="text"),
])
def test_bad_block(block, message):
    with pytest.raises(patternc.PatternError, match=message) as err:
        patternc.compile("causal", 64, block=block)
    assert "block" in str(err.value)


@pytest.mark.parametrize("expr, params, message", [
    pytest.param("window(8)", {"w": 3}, "unknown parameter 'w'", id="unused"),
    pytest.param("window($w)", {"w": 3, "x": 1}, "unknown parameter 'x'", id="one_extra"),
    pytest.param("window($w)", {}, r"\$w is not bound", id="missing"),
    pytest.param("window($w)", {"w": "3"}, "must be a number", id="string_value"),
    pytest.param("window($w)", {"$w": 3}, "not an identifier", id="dollar_name"),
    pytest.param("window($w)", {"w": 2.5}, "must be an integer", id="non_integral"),
])
def test_bad_params(expr, params, message):
    with pytest.raises(patternc.PatternError, match=message):
        patternc.compile(expr, 64, block=8, params=params)


TYPED = "causal & window($w + 3 - $w)"  # window(3) in integers; window(4) in floats (1e16 + 3 is 1e16 + 4)


def _pairs(spec, params=None) -> int:
    return patternc.compile(spec, n=64, block=16, params=params).stats().per_head[0].allowed_pairs


@pytest.mark.parametrize("first, then, pairs", [
    pytest.param(10**16, 1e16, 250, id="float_after_int"),
    pytest.param(1e16, 10**16, 189, id="int_after_float"),
])
def test_equal_parameters_of_another_type_are_not_served_from_the_cache(first, then, pairs):
    """10**16 == 1e16 in Python, but they evaluate differently: the compile cache must tell them apart,
    whether they come as params= or as a stack's own defaults."""
    patternc.compiled.clear_cache()
    _pairs(TYPED, {"w": first})
    assert _pairs(TYPED, {"w": then}) == pairs
    _pairs(patternc.Stack(TYPED, params=(("w", first),)))
    assert _pairs(patternc.Stack(TYPED, params=(("w", then),))) == pairs


def test_bad_spec_type():
    with pytest.raises(patternc.PatternError, match="cannot compile"):
        patternc.compile(42, 64)


# ---- stats ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["causal & window(40)", "window(40) | global(3)", "stride(7)",
                                  "none", "all", "causal & random(2, seed=1)"])
def test_stats_are_consistent(expr):
    n, block = 203, (16, 32)
    cp = patternc.compile(expr, n, block=block)
    s = cp.stats()
    assert (s.n, s.block, s.layers, s.heads) == (n, block, 1, 1)
    (h,) = s.per_head
    dense = cp.to_dense(0, 0)
    indptr, indices, full = cp.layout()
    assert h.nnz == len(indices) == h.full_blocks + h.partial_blocks
    assert h.full_blocks == int(full.sum())
    assert h.allowed_pairs == int(dense.sum())
    envelope = n * (n + 1) // 2 if s.causal else n * n
    assert s.causal == (not np.triu(dense, 1).any())
    assert h.token_density == pytest.approx(h.allowed_pairs / envelope)
    assert h.block_density == pytest.approx(h.nnz / (cp.grid.nbq * cp.grid.nbk))
    assert h.max_blocks_per_row == int(np.diff(indptr).max())
    for value in (h.block_density, h.token_density, h.partial_share):
        assert 0.0 <= value <= 1.0
    rows = np.repeat(np.arange(cp.grid.nbq), np.diff(indptr))
    heights = np.minimum((rows + 1) * block[0], n) - rows * block[0]
    widths = np.minimum((indices + 1) * block[1], n) - indices * block[1]
    assert h.stored_pairs == int((heights * widths).sum())
    if h.allowed_pairs:
        assert h.inflation == pytest.approx(h.stored_pairs / h.allowed_pairs)
    assert s.to_dict()["per_head"][0] == h.to_dict()
    json.dumps(s.to_dict())


def test_causal_token_density_uses_the_lower_triangle():
    s = patternc.compile("causal", 100, block=16).stats()
    assert s.causal and s.per_head[0].token_density == 1.0
    s = patternc.compile("all", 100, block=16).stats()
    assert not s.causal and s.per_head[0].token_density == 1.0
    s = patternc.compile("window(3)", 100, block=16).stats()
    pairs = 5 * 100 - 2 * (1 + 2)  # five diagonals, minus the corners they lose at the edges
    assert not s.causal and s.per_head[0].token_density == pytest.approx(pairs / 100**2)


def test_inflation_warning():
    s = patternc.compile("stride(64)", 4096).stats()
    assert s.per_head[0].block_density == 1.0 and s.per_head[0].inflation == pytest.approx(64.0)
    assert len(s.warnings) == 1 and "stride(64)" in s.warnings[0]
    assert patternc.compile("causal & window(512)", 4096).stats().warnings == ()


def test_inflation_warning_names_each_distinct_head_once():
    stack = patternc.Stack(default="causal & window(512)", layers=2, heads=2,
                           overrides=(patternc.Override(expr="stride(64)", heads=(1, 2)),))
    s = patternc.compile(stack, 4096).stats()
    assert len(s.warnings) == 1 and s.warnings[0].startswith("layer 0 head 1")


# ---- mask_mod and FlexAttention ------------------------------------------------------------------


def test_mask_mod_is_the_token_predicate():
    torch = pytest.importorskip("torch")
    stack = patternc.Stack(default="causal & (window(5) | global(2))", layers=1, heads=2,
                           overrides=(patternc.Override(expr="random(2, seed=4) - diagonals([0])",
                                                        heads=(1, 2)),))
    cp = patternc.compile(stack, 50, block=(8, 4))
    q, k = torch.arange(50)[:, None], torch.arange(50)[None, :]
    for h in range(2):
        mm = cp.mask_mod(0, h)
        assert mm.__name__.isidentifier()
        got = mm(torch.tensor(0), torch.tensor(h), q, k)
        np.testing.assert_array_equal(got.numpy(), cp.to_dense(0, h))
    assert cp.mask_mod(0, 0).__name__ == "causal_and_window_5_or_global_2"


def test_mask_mod_in_flex_attention_matches_sdpa():
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    n, d = 64, 16
    cp = patternc.compile("causal & window(5) | global(2)", n, block=16)
    dense = cp.to_dense(0, 0)
    assert dense.any(axis=1).all()  # no empty rows, so softmax is defined everywhere
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, d, generator=gen, dtype=torch.float32) for _ in range(3))
    block_mask = flex.create_block_mask(cp.mask_mod(), 1, 1, n, n, device="cpu", BLOCK_SIZE=16)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex warns that it is not fused
            out = flex.flex_attention(q, k, v, block_mask=block_mask)
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - depends on torch build
        pytest.skip(f"flex_attention eager on CPU is not supported by this torch: {err}")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    ref = sdpa(q, k, v, attn_mask=torch.from_numpy(dense))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # and the mask matters: dense attention gives something else
    assert not torch.allclose(out, sdpa(q, k, v), atol=1e-3)


def test_repr_names_the_pattern():
    text = repr(patternc.compile("causal & window(8)", 64, block=(16, 8)))
    assert "causal & window(8)" in text and "n=64" in text and "(16, 8)" in text


def test_a_compiled_patterns_params_are_read_only():
    """A compiled pattern is cached and shared: changing its params would change every holder's."""
    cp = patternc.compile("causal & window($w)", 64, params={"w": 8})
    assert cp.params == {"w": 8}
    with pytest.raises(TypeError):
        cp.params["w"] = 16
