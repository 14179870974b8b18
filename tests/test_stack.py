"""Stacks: the shipped YAML files, the dict/YAML round trip, override resolution and validation.

Every malformed file must fail with a ``StackError`` whose text names the file and the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import patternc
from patternc import Override, Stack, StackError, ast, load_stack, parse

CONF = Path(__file__).resolve().parents[1] / "conf" / "pattern"
SHIPPED = sorted(CONF.glob("*.yaml"))


def test_shipped_files_exist():
    assert len(SHIPPED) >= 10


# ---- the shipped stacks --------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_stack_loads_as_written(path):
    raw = yaml.safe_load(path.read_text())
    stack = load_stack(path)
    assert stack.source == str(path)
    assert stack.layers == raw.get("layers", 1)
    assert stack.heads == raw.get("heads", 1)
    block = raw.get("block")
    if block is None:
        assert stack.block is None
    elif isinstance(block, int):
        assert stack.block == (block, block)
    else:
        assert stack.block == tuple(block)
    assert stack.causal == raw.get("causal")
    assert stack.default == raw["default"].strip()
    assert [o.expr for o in stack.overrides] == [o["expr"].strip()
                                                  for o in raw.get("overrides") or []]
    assert dict(stack.params) == (raw.get("params") or {})
    assert stack.description == raw.get("description", "")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_expressions_parse_and_params_are_declared(path):
    stack = load_stack(path)
    declared = {name for name, _ in stack.params}
    for text in stack.expressions():
        tree = parse(text)
        used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Param)}
        assert used <= declared, f"{text}: parameters {used - declared} have no default"
        assert parse(patternc.unparse(tree)) == tree


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_stack_round_trips(path, tmp_path):
    stack = load_stack(path)
    assert Stack.from_dict(stack.to_dict()) == stack
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(stack.to_dict(), sort_keys=False))
    assert load_stack(copy) == stack


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_stack_compiles_small(path):
    cp = patternc.compile(path, n=512, block=64)
    assert (cp.layers, cp.heads) == (load_stack(path).layers, load_stack(path).heads)


def test_shipped_overrides_resolve():
    strided = load_stack(CONF / "sparse_transformer_strided.yaml")
    assert strided.rule_at(0, 3) == ("causal & window(round(sqrt(n)))", "default")
    assert strided.rule_at(11, 4) == ("causal & stride(round(sqrt(n)))", "overrides[0].expr")
    assert strided.overrides[0].heads == (4, 8)
    assert strided.overrides[0].layers is None

    longformer = load_stack(CONF / "longformer.yaml")
    assert longformer.overrides[0].layers == (6, 12)
    assert longformer.overrides[0].heads == (0, 2)
    assert longformer.rule_at(6, 1)[1] == "overrides[0].expr"
    assert longformer.rule_at(5, 1)[1] == "default"
    assert longformer.rule_at(6, 2)[1] == "default"

    chunked = load_stack(CONF / "chunked_interleaved.yaml")
    dense_layers = {layer for layer in range(chunked.layers) if chunked.rule_at(layer, 0)[0] ==
                    "causal"}
    assert dense_layers == {3, 7, 11}
    assert dict(chunked.params) == {"c": 1024}


# ---- ranges --------------------------------------------------------------------------------------

RANGES = [
    pytest.param("2:5", (2, 5), id="a:b"),
    pytest.param("2:", (2, 8), id="a:"),
    pytest.param(":3", (0, 3), id=":b"),
    pytest.param(":", (0, 8), id="colon-alone"),
    pytest.param(5, (5, 6), id="int"),
    pytest.param(0, (0, 1), id="zero"),
    pytest.param("7:8", (7, 8), id="last"),
    pytest.param(" 2 : 5 ", (2, 5), id="spaces"),
    pytest.param(None, None, id="null-means-all"),
]


@pytest.mark.parametrize(("value", "span"), RANGES)
@pytest.mark.parametrize("axis", ["layers", "heads"])
def test_override_ranges(axis, value, span):
    stack = Stack.from_dict({"layers": 8, "heads": 8, "default": "causal",
                             "overrides": [{axis: value, "expr": "all"}]})
    assert getattr(stack.overrides[0], axis) == span
    other = "heads" if axis == "layers" else "layers"
    assert getattr(stack.overrides[0], other) is None
    lo, hi = span or (0, 8)
    for index in range(8):
        at = (index, 0) if axis == "layers" else (0, index)
        assert stack.rule_at(*at)[0] == ("all" if lo <= index < hi else "causal")


# ---- rule_at -------------------------------------------------------------------------------------


def test_rule_at_later_overrides_win():
    stack = Stack(
        default="causal", layers=4, heads=4,
        overrides=(
            Override("all", layers=(0, 3)),
            Override("none", heads=(1, 2)),
            Override("window(2)", layers=(2, 4), heads=(0, 4)),
        ),
    )
    want = [
        # head:  0              1              2              3
        ["all", "none", "all", "all"],              # layer 0
        ["all", "none", "all", "all"],              # layer 1
        ["window(2)", "window(2)", "window(2)", "window(2)"],  # layer 2
        ["window(2)", "window(2)", "window(2)", "window(2)"],  # layer 3
    ]
    got = [[stack.rule_at(layer, head)[0] for head in range(4)] for layer in range(4)]
    assert got == want
    assert stack.rule_at(0, 1) == ("none", "overrides[1].expr")
    assert stack.rule_at(3, 3) == ("window(2)", "overrides[2].expr")
    assert Stack(default="causal", layers=2).rule_at(1, 0) == ("causal", "default")


@st.composite
def stacks(draw):
    layers, heads = draw(st.integers(1, 6)), draw(st.integers(1, 6))

    def span(count):
        return st.none() | st.tuples(st.integers(0, count - 1), st.integers(1, count)).filter(
            lambda s: s[0] < s[1])

    exprs = st.sampled_from(["causal", "all", "none", "window(2)", "causal & window($w)",
                             "sink(l + 1) | stride(h + 2)"])
    overrides = draw(st.lists(st.builds(Override, exprs, span(layers), span(heads)), max_size=5))
    block = draw(st.none() | st.integers(1, 256).map(lambda b: (b, b))
                 | st.tuples(st.integers(1, 256), st.integers(1, 256)))
    params = draw(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,4}", fullmatch=True),
                                  st.integers(-100, 10**6) | st.floats(-1e6, 1e6, allow_nan=False),
                                  max_size=3))
    return Stack(default=draw(exprs), layers=layers, heads=heads, block=block,
                 causal=draw(st.none() | st.booleans()), overrides=tuple(overrides),
                 params=tuple(sorted(params.items())),
                 description=draw(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                                          max_size=20)))


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(stacks())
def test_rule_at_matches_reference(stack):
    for layer in range(stack.layers):
        for head in range(stack.heads):
            want = ("default", stack.default)
            for index, rule in enumerate(stack.overrides):
                in_layers = rule.layers is None or rule.layers[0] <= layer < rule.layers[1]
                in_heads = rule.heads is None or rule.heads[0] <= head < rule.heads[1]
                if in_layers and in_heads:
                    want = (f"overrides[{index}].expr", rule.expr)
            assert stack.rule_at(layer, head) == (want[1], want[0])


@PROPERTY
@given(stacks())
def test_dict_round_trip(stack):
    assert Stack.from_dict(stack.to_dict()) == stack


@PROPERTY
@given(stacks())
def test_yaml_round_trip(tmp_path_factory, stack):
    path = tmp_path_factory.mktemp("rt") / "stack.yaml"
    path.write_text(yaml.safe_dump(stack.to_dict(), sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    loaded = load_stack(path)
    assert loaded == stack
    assert loaded.source == str(path)


def test_round_trip_distinguishes():
    """Equality is not vacuous: each field takes part in it (source does not)."""
    base = Stack(default="causal", layers=2, heads=2, block=(64, 64), causal=True,
                 overrides=(Override("all", layers=(1, 2)),), params=(("w", 3),),
                 description="x")
    changes = dict(default="all", layers=3, heads=3, block=(64, 32), causal=False,
                   overrides=(Override("all", layers=(0, 2)),), params=(("w", 4),),
                   description="y")
    fields = {f: getattr(base, f) for f in ("default", "layers", "heads", "block", "causal",
                                            "overrides", "params", "description")}
    for name, value in changes.items():
        assert Stack(**{**fields, name: value}) != base, name
    assert Stack(**fields, source="elsewhere.yaml") == base


def test_to_dict_shape():
    stack = Stack(default="causal", layers=4, heads=2, block=(64, 32), causal=True,
                  overrides=(Override("all", layers=(1, 2)), Override("none", heads=(0, 2))),
                  params=(("w", 3),))
    assert stack.to_dict() == {
        "layers": 4, "heads": 2, "block": [64, 32], "causal": True, "default": "causal",
        "overrides": [{"layers": 1, "expr": "all"}, {"heads": "0:2", "expr": "none"}],
        "params": {"w": 3},
    }
    assert Stack(default="causal", block=(128, 128)).to_dict()["block"] == 128


def test_block_forms():
    assert Stack.from_dict({"default": "causal", "block": 64}).block == (64, 64)
    assert Stack.from_dict({"default": "causal", "block": [64, 32]}).block == (64, 32)
    assert Stack.from_dict({"default": "causal", "block": [16]}).block == (16, 16)
    assert Stack.from_dict({"default": "causal"}).block is None


def test_defaults_and_source():
    stack = Stack.from_dict({"default": "  causal  "})
    assert (stack.layers, stack.heads, stack.causal, stack.overrides) == (1, 1, None, ())
    assert stack.default == "causal"
    assert stack.source is None
    assert Stack.from_dict({"default": "causal"}, source="x.yaml").source == "x.yaml"


def test_load_stack_accepts_str_and_path(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("layers: 2\ndefault: causal\n")
    assert load_stack(path) == load_stack(str(path)) == Stack(default="causal", layers=2)


# ---- malformed files -----------------------------------------------------------------------------

_KEYS = "layers, heads, block, causal, default, overrides, params, description, kv_heads"
_RANGE = 'expected an index or a half-open range "a:b", got'

MALFORMED = [
    # (yaml text, key named in where ("" for the file itself), message)
    pytest.param("default: causal\nfoo: 1\n", "", f"unknown key 'foo'; a stack has {_KEYS}",
                 id="unknown-key"),
    pytest.param("default: causal\nLayers: 2\n", "", f"unknown key 'Layers'; a stack has {_KEYS}",
                 id="key-case"),
    pytest.param("layers: 2\n", "", "missing key 'default' (the expression used where no override"
                 " applies)", id="missing-default"),
    pytest.param("- causal\n", "", f"a stack is a mapping with keys {_KEYS}", id="list-not-map"),
    pytest.param("", "", f"a stack is a mapping with keys {_KEYS}", id="empty-file"),
    pytest.param("causal & window(4)\n", "", f"a stack is a mapping with keys {_KEYS}",
                 id="bare-expression-file"),
    pytest.param("default: 3\n", "default", "expected a pattern expression (text), got 3",
                 id="default-number"),
    pytest.param("default: ''\n", "default", "expected a pattern expression (text), got ''",
                 id="default-empty"),
    pytest.param("default:\n", "default", "expected a pattern expression (text), got None",
                 id="default-null"),
    pytest.param("layers: 0\ndefault: causal\n", "layers", "expected a positive integer, got 0",
                 id="layers-zero"),
    pytest.param("layers: two\ndefault: causal\n", "layers",
                 "expected a positive integer, got 'two'", id="layers-text"),
    pytest.param("layers: 2.0\ndefault: causal\n", "layers", "expected a positive integer, got 2.0",
                 id="layers-float"),
    pytest.param("heads: true\ndefault: causal\n", "heads", "expected a positive integer, got True",
                 id="heads-bool"),
    pytest.param("heads: -3\ndefault: causal\n", "heads", "expected a positive integer, got -3",
                 id="heads-negative"),
    pytest.param("default: causal\ncausal: 'yes'\n", "causal", "expected true or false, got 'yes'",
                 id="causal-text"),
    pytest.param("default: causal\ncausal: 1\n", "causal", "expected true or false, got 1",
                 id="causal-int"),
    pytest.param("default: causal\nblock: 0\n", "block",
                 "a block size must be a positive integer, got 0", id="block-zero"),
    pytest.param("default: causal\nblock: [1, 2, 3]\n", "block",
                 "block must be one size or [bq, bk], got [1, 2, 3]", id="block-three"),
    pytest.param("default: causal\nblock: abc\n", "block",
                 "block must be an integer or BQ,BK, got 'abc'", id="block-text"),
    pytest.param("default: causal\nblock: [64, 0.5]\n", "block",
                 "a block size must be a positive integer, got 0.5", id="block-float"),
    pytest.param("default: causal\nparams: {w: abc}\n", "params",
                 "parameter w must be a number, got 'abc'", id="param-text"),
    pytest.param("default: causal\nparams: {w: true}\n", "params",
                 "parameter w must be a number, got True", id="param-bool"),
    pytest.param("default: causal\nparams: {$w: 3}\n", "params",
                 "parameter name '$w' is not an identifier (write w, not $w)", id="param-dollar"),
    pytest.param("default: causal\nparams: {1: 3}\n", "params",
                 "parameter name 1 is not an identifier (write w, not $w)", id="param-int-name"),
    pytest.param("default: causal\nparams: [1, 2]\n", "params",
                 "params must map parameter names to numbers", id="params-list"),
    pytest.param("layers: 2\ndefault: causal\noverrides: {layers: 0}\n", "",
                 "overrides must be a list of {layers, heads, expr}", id="overrides-map"),
    pytest.param("layers: 2\ndefault: causal\noverrides: [causal]\n", "overrides[0]",
                 "expected a mapping with keys layers, heads, expr", id="override-text"),
    pytest.param("layers: 2\ndefault: causal\noverrides:\n  - layer: 0\n    expr: all\n",
                 "overrides[0]", "unknown key 'layer'; an override has layers, heads, expr",
                 id="override-unknown-key"),
    pytest.param("layers: 2\ndefault: causal\noverrides:\n  - layers: 0\n", "overrides[0]",
                 "missing key 'expr'", id="override-no-expr"),
    pytest.param("layers: 2\ndefault: causal\noverrides:\n  - {layers: 0, expr: all}\n"
                 "  - {layers: 1, expr: 7}\n", "overrides[1].expr",
                 "expected a pattern expression (text), got 7", id="override-expr-number"),
    pytest.param("layers: 2\ndefault: causal\noverrides:\n  - {layers: '1:3', expr: all}\n",
                 "overrides[0].layers", "1:3 is outside 0:2", id="range-past-end"),
    pytest.param("layers: 2\ndefault: causal\noverrides:\n  - {layers: 2, expr: all}\n",
                 "overrides[0].layers", "2:3 is outside 0:2", id="index-past-end"),
    pytest.param("layers: 2\ndefault: causal\noverrides:\n  - {layers: -1, expr: all}\n",
                 "overrides[0].layers", "-1:0 is outside 0:2", id="negative-index"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: '-1:', expr: all}\n",
                 "overrides[0].heads", "-1:4 is outside 0:4", id="negative-start"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: '2:2', expr: all}\n",
                 "overrides[0].heads", "2:2 is empty (a half-open range a:b needs a < b)",
                 id="empty-range"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: '3:1', expr: all}\n",
                 "overrides[0].heads", "3:1 is empty (a half-open range a:b needs a < b)",
                 id="reversed-range"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: 1, expr: all}\n"
                 "  - {heads: 5, expr: all}\n", "overrides[1].heads", "5:6 is outside 0:4",
                 id="second-override"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: 'a:b', expr: all}\n",
                 "overrides[0].heads", f"{_RANGE} 'a:b'", id="range-text"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: '1:2:3', expr: all}\n",
                 "overrides[0].heads", f"{_RANGE} '1:2:3'", id="range-two-colons"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: '1-3', expr: all}\n",
                 "overrides[0].heads", f"{_RANGE} '1-3'", id="range-dash"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: 1.5, expr: all}\n",
                 "overrides[0].heads", f"{_RANGE} 1.5", id="range-float"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: true, expr: all}\n",
                 "overrides[0].heads", f"{_RANGE} True", id="range-bool"),
    pytest.param("heads: 4\ndefault: causal\noverrides:\n  - {heads: [1, 2], expr: all}\n",
                 "overrides[0].heads", f"{_RANGE} [1, 2]", id="range-list"),
]


@pytest.mark.parametrize(("text", "key", "message"), MALFORMED)
def test_malformed_file(tmp_path, text, key, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(StackError) as info:
        load_stack(path)
    err = info.value
    where = f"{path}: {key}" if key else str(path)
    assert err.where == where
    assert err.message == message
    assert str(err) == f"{where}: {message}"


@pytest.mark.parametrize(("text", "key", "message"), MALFORMED)
def test_malformed_dict_without_file(text, key, message):
    data = yaml.safe_load(text)
    with pytest.raises(StackError) as info:
        Stack.from_dict(data)
    assert info.value.where == (f"stack: {key}" if key else "stack")
    assert info.value.message == message


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("default: [causal\n")
    with pytest.raises(StackError) as info:
        load_stack(path)
    err = info.value
    assert err.where == str(path)
    assert err.message.startswith("not valid YAML: ")
    assert str(err).startswith(f"{path}: not valid YAML: ")
    assert "line 2, column 1" in err.message  # where the parser gave up


def test_tab_indentation_is_invalid_yaml(tmp_path):
    path = tmp_path / "tabs.yaml"
    path.write_text("default:\tcausal\n\tlayers: 3\n")
    with pytest.raises(StackError, match="not valid YAML"):
        load_stack(path)


@pytest.mark.parametrize("make, message", [
    pytest.param(lambda tmp: tmp / "missing.yaml", "cannot read stack file: ", id="missing"),
    pytest.param(lambda tmp: tmp, "is a directory, not a stack file", id="directory"),
])
def test_unreadable_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(StackError) as info:
        load_stack(path)
    assert info.value.where == str(path)
    assert info.value.message.startswith(message)
    assert str(info.value).startswith(f"{path}: {message}")


def test_bad_expression_keeps_its_class_and_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("layers: 2\ndefault: causal\noverrides:\n"
                    "  - {layers: 1, expr: 'all | windw(3)'}\n")
    with pytest.raises(patternc.PatternMeaningError) as info:
        load_stack(path)
    err = info.value
    assert err.where == f"{path}: overrides[0].expr"
    assert str(err).split("\n") == [
        f"{path}: overrides[0].expr: unknown primitive 'windw' (did you mean 'window'?)",
        "  all | windw(3)",
        "        ^^^^^",
    ]


def test_direct_construction_is_validated():
    with pytest.raises(StackError) as info:
        Stack(default="causal", layers=2, overrides=(Override("all", layers=(0, 3)),))
    assert info.value.where == "stack: overrides[0].layers"
    with pytest.raises(StackError, match="expected a positive integer"):
        Stack(default="causal", heads=0)
    with pytest.raises(patternc.PatternSyntaxError) as err:
        Stack(default="causal &", layers=2)
    assert err.value.where == "stack: default"
    with pytest.raises(patternc.PatternSyntaxError) as err:  # a bare expression: no key
        Stack(default="causal &")
    assert err.value.where is None


def test_an_override_that_is_not_an_override_is_refused_by_name():
    with pytest.raises(patternc.StackError, match=r"stack: overrides\[0\].*use Stack.from_dict"):
        patternc.Stack(default="causal", layers=2, overrides=[{"layers": 1, "expr": "causal & window(4)"}])
