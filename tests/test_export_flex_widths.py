"""The widths of ``to_block_mask``'s tables (``patternc.export.widths``): compact, padded, full.

- Read as a kernel reads them (each row's first ``count`` entries, through the tensor's strides),
  every form gives exactly our layout, on the lowering oracle's table of expressions and shapes.
- FlexAttention's outputs are identical whatever the form: eager on the whole table, compiled on
  CPU on a subset with per-head dispatch, shared and per-head tables.
- ``WIDTH_RULES`` is right for the running torch: on CPU the compiled kernel refuses compact tables
  exactly when the table says so (a torch that starts taking them fails this test, so the table
  gets updated rather than assumed), and on CUDA, when there is one, compact runs as full does.
- A layout at n = 1M x 32 heads gets tables proportional to its blocks, and none of the export
  evaluates the pattern per token.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_flex_oracle import EXPRESSIONS, SHAPES

import patternc
from patternc.export.widths import FORMS, WIDTH_RULES, table_form

torch = pytest.importorskip("torch")
flex = pytest.importorskip("torch.nn.attention.flex_attention")

TABLE = [p.values[0] for p in EXPRESSIONS]
# a subset for the compiled kernel (each new mask_mod is a compile): offsets, positions, a random
# table, a diagonal list, heads that differ; every row narrower than the key blocks, so that
# compact tables really are narrower than full ones (global rows, tokens and complements are not)
COMPILED = ["causal & window(33)", "causal & (window(16) | global(8))", "random(2, seed=3)",
            "stride(5) & window(40)", "diagonals([0, 5, -40])", "chunk(48)", "causal & dilated(8, 3)",
            "band(-3, 20)"]


def one_head_each(expressions: list[str], layers: int = 1) -> patternc.Stack:
    """A stack whose head h is expressions[h] in its last layer; earlier layers repeat head 0's."""
    overrides = tuple(patternc.Override(expr=e, layers=(layers - 1, layers), heads=(h, h + 1))
                      for h, e in enumerate(expressions))
    return patternc.Stack(default=expressions[0], layers=layers, heads=len(expressions), overrides=overrides)


def forms(cp, layer, device="cpu"):
    """The three forms of one layer's BlockMask, sharing the first one's mask_mod (a new mask_mod
    is a new trace for FlexAttention)."""
    masks = {form: cp.to_block_mask(layer, device=device, width=form) for form in FORMS}
    for form in FORMS[1:]:
        masks[form].mask_mod = masks[FORMS[0]].mask_mod
    return masks


def read_lists(num, idx):
    """{(head, row, col)} read as a kernel reads the tables: row r's first num[r] entries."""
    num, idx = num[0], idx[0]  # a kernel indexes through strides, so do the same: no .contiguous()
    return {(h, r, int(idx[h, r, e])) for h in range(num.shape[0]) for r in range(num.shape[1])
            for e in range(int(num[h, r]))}


def ours(cp, layer, full: bool, by_column: bool = False):
    out = set()
    for h in range(cp.heads):
        layout = cp.layout(layer, h)
        chosen = layout.full == full
        for i, j in zip(layout.rows()[chosen], layout.indices[chosen], strict=True):
            out.add((h, int(j), int(i)) if by_column else (h, int(i), int(j)))
    return out


@pytest.mark.parametrize("n, block", SHAPES)
def test_every_form_lists_our_layout(n, block):
    cp = patternc.compile(one_head_each(TABLE), n, block=block)
    grid = cp.grid
    for form, bm in forms(cp, 0).items():
        wide = {"kv_indices": grid.nbk, "q_indices": grid.nbq}
        for prefix, full in (("", False), ("full_", True)):
            assert read_lists(getattr(bm, f"{prefix}kv_num_blocks"), getattr(bm, f"{prefix}kv_indices")) \
                == ours(cp, 0, full), f"{form}: {prefix}kv lists"
            assert read_lists(getattr(bm, f"{prefix}q_num_blocks"), getattr(bm, f"{prefix}q_indices")) \
                == ours(cp, 0, full, by_column=True), f"{form}: {prefix}q lists"
            for name, nb in wide.items():
                shape = tuple(getattr(bm, prefix + name).shape)
                counts = getattr(bm, prefix + name.replace("indices", "num_blocks"))
                widest = max(1, int(counts.max()))
                assert shape[-1] == (widest if form == "compact" else nb), f"{form}: {prefix}{name} {shape}"
        if form != "compact":  # BlockMask.to_dense takes the width for the number of key blocks
            np.testing.assert_array_equal(bm.to_dense()[0].numpy().astype(bool),
                                          cp.to_dense_blocks()[0].astype(bool))


def test_padded_and_compact_share_memory_and_full_is_dense():
    cp = patternc.compile(patternc.Stack(default="causal & (window(100) | sink(4))", heads=8), 4096, block=64)
    bm = {form: cp.to_block_mask(0, width=form) for form in FORMS}
    nbytes = {form: b.kv_indices.untyped_storage().nbytes() for form, b in bm.items()}
    widest = int(bm["compact"].kv_num_blocks.max())
    assert bm["compact"].kv_indices.stride()[1] == 0  # eight heads, one table
    assert nbytes["compact"] == 64 * widest * 4
    assert nbytes["padded"] == nbytes["compact"] + 4 * (64 - widest)
    assert nbytes["full"] == 8 * 64 * 64 * 4 and bm["full"].kv_indices.is_contiguous()


def test_backward_false_leaves_out_the_query_tables():
    bm = patternc.compile("causal & window(40)", 300, block=32).to_block_mask(backward=False)
    assert bm.q_indices is None and bm.full_q_indices is None
    assert bm.kv_indices is not None


def test_a_bad_width_is_refused():
    cp = patternc.compile("causal", 64)
    with pytest.raises(patternc.PatternError, match="width must be 'auto' or one of compact, padded, full"):
        cp.to_block_mask(width="narrow")


@pytest.mark.parametrize("n, block", [SHAPES[2]])
def test_eager_flex_attention_is_identical_in_every_form(n, block):
    """Eager FlexAttention evaluates the mask_mod on every pair: the tables must not change it."""
    cp = patternc.compile(one_head_each(TABLE), n, block=block)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, cp.heads, n, 16, generator=gen) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex warns that it is not fused
        out = {form: flex.flex_attention(q, k, v, block_mask=bm) for form, bm in forms(cp, 0).items()}
    for form in FORMS[1:]:
        torch.testing.assert_close(out[form], out[FORMS[0]], rtol=0, atol=0, equal_nan=True)


def _compiled_outcome(run, reference) -> str:
    try:
        out = run()
    except Exception as err:  # the width check raises inside inductor's lowering
        return f"refused ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return "identical" if torch.equal(out, reference) else "different"


def _expected(rule: str) -> dict[str, str]:
    return {"compact": {"compact": "identical", "padded": "identical"},
            "padded": {"compact": "refused", "padded": "identical"},
            "full": {"compact": "refused", "padded": "refused"}}[rule]


def _check_against_the_table(device: str, layers: dict[int, dict]):
    """Run compiled flex on each layer's three forms and compare what happens with WIDTH_RULES."""
    from patternc.kernels import compiled_flex

    rule = table_form(device)
    kernel = compiled_flex()
    for layer, (cp, qkv) in layers.items():
        masks = forms(cp, layer, device)
        assert masks["compact"].kv_indices.shape[-1] < cp.grid.nbk, "compact is as wide as full here"
        reference = kernel(*qkv, block_mask=masks["full"])
        outcomes = {form: _compiled_outcome(lambda bm=masks[form], qkv=qkv: kernel(*qkv, block_mask=bm),
                                            reference)
                    for form in ("compact", "padded")}
        got = {form: outcome.split(" ")[0] for form, outcome in outcomes.items()}
        assert got == _expected(rule), (
            f"WIDTH_RULES says compiled FlexAttention on {device} under torch {torch.__version__} needs "
            f"{rule!r} tables, but on layer {layer}: {outcomes}; update patternc/export/widths.py")


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside torch.compile
def test_compiled_cpu_kernel_matches_the_width_table():
    """Layer 0: every head shares one table (a stride-0 head axis); layer 1: one table per head."""
    n = 200
    cp = patternc.compile(one_head_each(COMPILED, layers=2), n, block=(32, 16))
    gen = torch.Generator().manual_seed(1)
    qkv = tuple(torch.randn(1, cp.heads, n, 16, generator=gen) for _ in range(3))
    assert len({cp.node(0, h) for h in range(cp.heads)}) == 1 and len({cp.node(1, h) for h in range(8)}) == 8
    _check_against_the_table("cpu", {0: (cp, qkv), 1: (cp, qkv)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA row of WIDTH_RULES needs a GPU")
def test_compiled_cuda_kernel_matches_the_width_table():
    n = 1024
    cp = patternc.compile(one_head_each(COMPILED[:4]), n, block=128)
    gen = torch.Generator(device="cuda").manual_seed(1)
    qkv = tuple(torch.randn(1, cp.heads, n, 64, generator=gen, device="cuda") for _ in range(3))
    _check_against_the_table("cuda", {0: (cp, qkv)})


def test_every_device_row_names_its_evidence():
    assert {rule.device for rule in WIDTH_RULES} == {"cpu", "cuda"}
    assert all(rule.form in FORMS and rule.evidence for rule in WIDTH_RULES)


def test_a_million_tokens_take_tables_proportional_to_their_blocks(monkeypatch):
    """n = 1M, 32 heads of causal & (window(4096) | sink(64)): full-width tables would be 32 GiB;
    compact ones hold the stored blocks (shared by the heads), plus the query side's sink column,
    which is as long as there are query blocks. And no predicate sees more than the one-element
    tensors that record the mask_mod: nothing is evaluated per token."""
    from patternc.lower.node import Lowered

    largest = []

    def watch(cls):
        original = cls.predicate

        def predicate(self, q, k):
            largest.append(max(x.numel() if hasattr(x, "numel") else np.size(x) for x in (q, k)))
            return original(self, q, k)

        monkeypatch.setattr(cls, "predicate", predicate)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    n, heads = 2**20, 32
    cp = patternc.compile(patternc.Stack("causal & (window(4096) | sink(64))", heads=heads), n)
    nbq = cp.grid.nbq  # 8192
    stored = int(np.diff(cp.layout(0, 0).indptr).max())  # the widest row of stored blocks
    for cls in set(subclasses(Lowered)):  # from here on, every predicate call is seen
        if "predicate" in vars(cls):
            watch(cls)
    bm = cp.to_block_mask(0, width="compact")
    assert largest and max(largest) == 1
    for name in ("kv_indices", "full_kv_indices"):
        table = getattr(bm, name)
        assert table.shape[:3] == (1, heads, nbq) and table.shape[3] <= stored
        assert table.untyped_storage().nbytes() == 4 * nbq * table.shape[3]  # one table for all heads
    q_bytes = sum(getattr(bm, name).untyped_storage().nbytes() for name in ("q_indices", "full_q_indices"))
    assert q_bytes <= 4 * nbq * (nbq + 64)  # the sink column lists every query block once
    total = sum(t.untyped_storage().nbytes() for t in (
        bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices, bm.q_num_blocks,
        bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices))
    assert total < 300 * 2**20 < 32 * 2**30
    forward = cp.to_block_mask(0, width="compact", backward=False)
    kv_bytes = [t.untyped_storage().nbytes() for t in (forward.kv_indices, forward.full_kv_indices)]
    assert sum(kv_bytes) < 2 * 2**20


def test_full_width_tables_at_a_million_tokens_are_refused_before_allocation():
    cp = patternc.compile(patternc.Stack("causal & (window(4096) | sink(64))", heads=32), 2**20)
    with pytest.raises(patternc.PatternSizeError, match="bytes of full BlockMask tables for layer 0"):
        cp.to_block_mask(0, width="full")


def test_a_refusal_says_which_tables_are_too_large_and_the_real_way_out():
    """Compact was asked; what is too large is the backward's query-side tables (a sink column lists every
    query block, and two distinct patterns give each of 32 heads its own copy): the way out is
    backward=False or a larger block, never width='compact' again."""
    half = patternc.Override("causal & (window(2048) | sink(64))", heads=(0, 16))
    stack = patternc.Stack("causal & (window(4096) | sink(64))", heads=32, overrides=(half,))
    cp = patternc.compile(stack, 2**20)
    with pytest.raises(patternc.PatternSizeError) as refused:
        cp.to_block_mask(0, width="compact")
    message = str(refused.value)
    assert "query-side tables for the backward" in message and "backward=False" in message
    assert "width='compact'" not in message
    forward = cp.to_block_mask(0, width="compact", backward=False)  # the way out it gives works
    assert forward.q_indices is None
