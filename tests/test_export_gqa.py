"""Grouped-query attention: ``kv_heads`` on stacks, the KV groups of ``patternc.export.gqa``,
``patternc check``'s finding, and the per-KV-head exports' refusal or union."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import patternc
from patternc import Override, Stack, StackError
from patternc.cli import main
from patternc.export.gqa import kv_patterns, mixed_kv_groups

MIXED = """\
layers: 2
heads: 4
kv_heads: 2
causal: true
default: causal & window(16)
overrides:
  - layers: 1
    heads: 3
    expr: causal & (window(16) | sink(4))
"""


@pytest.fixture
def mixed(tmp_path):
    path = tmp_path / "gqa.yaml"
    path.write_text(MIXED)
    return path


# ---- the stack key -------------------------------------------------------------------------------


def test_kv_heads_groups_query_heads_as_enable_gqa_does():
    stack = Stack("causal", heads=8, kv_heads=2)
    assert [stack.kv_head_of(h) for h in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]  # h // (8 // 2)
    assert [list(stack.kv_group(g)) for g in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_kv_heads_defaults_to_heads_and_round_trips(mixed, tmp_path):
    assert Stack("causal", heads=4).kv_heads == 4
    assert Stack("causal", heads=4) == Stack("causal", heads=4, kv_heads=4)
    assert "kv_heads" not in Stack("causal", heads=4).to_dict()  # written only when it differs
    stack = patternc.load_stack(mixed)
    assert stack.kv_heads == 2 and stack.to_dict()["kv_heads"] == 2
    assert Stack.from_dict(stack.to_dict()) == stack
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(stack.to_dict()))
    assert patternc.load_stack(again) == stack
    cp = patternc.compile(stack, 256, block=32)
    cp.save(tmp_path / "gqa.safetensors")
    assert patternc.load(tmp_path / "gqa.safetensors").stack.kv_heads == 2


@pytest.mark.parametrize("value, message", [
    pytest.param(3, "3 KV heads do not divide 4 query heads", id="not_a_divisor"),
    pytest.param(0, "expected a positive integer, got 0", id="zero"),
    pytest.param(True, "expected a positive integer, got True", id="bool"),
    pytest.param("2", "expected a positive integer, got '2'", id="text"),
    pytest.param(8, "8 KV heads do not divide 4 query heads", id="more_than_heads"),
])
def test_bad_kv_heads_names_the_file_and_key(tmp_path, value, message):
    path = tmp_path / "bad.yaml"
    path.write_text(MIXED.replace("kv_heads: 2", f"kv_heads: {json.dumps(value)}"))
    with pytest.raises(StackError, match=f"^{path}: kv_heads: {message}"):
        patternc.load_stack(path)


# ---- KV groups -----------------------------------------------------------------------------------


def test_mixed_groups_name_layer_group_heads_and_expressions(mixed):
    cp = patternc.compile(str(mixed), 256, block=32)
    (found,) = mixed_kv_groups(cp)
    assert (found.layer, found.kv_head, found.heads) == (1, 1, (2, 3))
    assert found.expressions == (("causal & window(16)", (2,)), ("causal & (window(16) | sink(4))", (3,)))
    assert "layer 1: KV head 1 (query heads 2-3)" in found.describe()


def test_groups_compare_pairs_not_expressions():
    """Different expressions allowing the same pairs are one pattern; one expression in h bound to
    different windows is two."""
    same = Stack("causal & window(8)", heads=2, kv_heads=1,
                 overrides=(Override("window(8) & causal & ~(causal - causal)", heads=(1, 2)),))
    assert mixed_kv_groups(patternc.compile(same, 128, block=16)) == ()
    differ = patternc.compile(Stack("causal & window(8 * (h + 1))", heads=2, kv_heads=1), 128, block=16)
    (found,) = mixed_kv_groups(differ)
    assert [text for text, _ in found.expressions] == ["causal & window(8 * (h + 1)) at h = 0",
                                                       "causal & window(8 * (h + 1)) at h = 1"]
    assert mixed_kv_groups(patternc.compile(Stack("causal & window(8 * (h + 1))", heads=2), 128)) == ()


def test_per_kv_head_patterns_refuse_a_mixed_group_or_unite_it(mixed):
    cp = patternc.compile(str(mixed), 256, block=32)
    assert [p.heads for p in kv_patterns(cp, 0)] == [(0, 1), (2, 3)]
    with pytest.raises(patternc.PatternMeaningError,
                       match=r"layer 1: KV head 1 \(query heads 2-3\).*head 2: causal & window\(16\); "
                             r"head 3: causal & \(window\(16\) \| sink\(4\)\).*union=True"):
        kv_patterns(cp, 1)
    united = kv_patterns(cp, 1, union=True)
    assert [p.exact for p in united] == [True, False]
    q, k = np.arange(256)[:, None], np.arange(256)[None, :]
    np.testing.assert_array_equal(united[1].node.predicate(q, k), cp.to_dense(1, 2) | cp.to_dense(1, 3))
    assert united[1].layout.nnz == patternc.compile(
        "causal & (window(16) | sink(4))", 256, block=32).layout().nnz  # the union is the wider head


@pytest.mark.parametrize("export", ["to_flashinfer_variable", "to_flashmask"])
def test_exports_per_kv_head_refuse_or_unite(export):
    stack = Stack.from_dict(yaml.safe_load(MIXED.replace("window(16)", "chunk(64)")))
    cp = patternc.compile(stack, 256, block=32)
    getattr(cp, export)(0)
    with pytest.raises(patternc.PatternMeaningError, match=r"KV head 1 \(query heads 2-3\)"):
        getattr(cp, export)(1)
    assert getattr(cp, export)(1, union=True).exact is False
    assert getattr(cp, export)(0, union=True).exact is True


# ---- patternc check ------------------------------------------------------------------------------


def test_check_warns_of_mixed_groups_and_lists_them_in_json(capsys, mixed):
    assert main(["check", str(mixed), "--n", "256"]) == 0
    out = capsys.readouterr().out
    assert "2 layers x 4 heads (2 KV heads)" in out.splitlines()[0]
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: layer 1: KV head 1 (query heads 2-3) is read by heads whose patterns "
                       "differ (head 2: causal & window(16); head 3: causal & (window(16) | sink(4))); "
                       "exports per KV head need one pattern per group (or --union, not exact)"]
    assert main(["check", str(mixed), "--n", "256", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kv_mismatches"] == [{"layer": 1, "kv_head": 1, "heads": [2, 3], "patterns": [
        {"expression": "causal & window(16)", "heads": [2]},
        {"expression": "causal & (window(16) | sink(4))", "heads": [3]}]}]
    assert data["warnings"] == [warning[0].removeprefix("warning: ")]


def test_check_is_quiet_when_groups_agree(capsys):
    assert main(["check", "causal & window(16)", "--n", "256"]) == 0
    assert "warning" not in capsys.readouterr().out
