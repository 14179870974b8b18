"""Stacks: a pattern for every layer and head of a model, as written in ``conf/pattern/*.yaml``.

.. code-block:: yaml

    layers: 12
    heads: 8
    block: 128                 # may be [bq, bk]
    causal: true               # declared; the checker flags any allowed pair with k > q
    default: causal & window(round(sqrt(n)))
    overrides:                 # applied in order, later wins; ranges are half-open "a:b" or one int
      - heads: "4:8"
        expr: causal & stride(round(sqrt(n)))
    params: {w: 512}           # default values of $parameters
    kv_heads: 2                # grouped-query attention: query head h reads KV head h // (heads // kv_heads)

A bare expression is a stack of one layer and one head.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real

import yaml

from patternc.errors import PatternError, PatternMeaningError, StackError, brief, check_int
from patternc.lang import ast, parse, unparse
from patternc.limits import (
    MAX_HEADS,
    MAX_OVERRIDES,
    MAX_STACK_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    require,
)

__all__ = ["Override", "Stack", "as_stack", "check_params", "index_runs", "layer_spans", "load_stack",
           "load_yaml", "params_key"]

_KEYS = ("layers", "heads", "block", "causal", "default", "overrides", "params", "description", "kv_heads")
_OVERRIDE_KEYS = ("layers", "heads", "expr")


@dataclass(frozen=True, slots=True)
class Override:
    """``expr`` on layers ``[layers[0], layers[1])`` and heads likewise; None means all."""

    expr: str
    layers: tuple[int, int] | None = None
    heads: tuple[int, int] | None = None

    def covers(self, layer: int, head: int) -> bool:
        return (self.layers is None or self.layers[0] <= layer < self.layers[1]) and (
            self.heads is None or self.heads[0] <= head < self.heads[1]
        )


@dataclass(frozen=True, slots=True)
class Stack:
    """Layers x heads of patterns: a default expression and overrides by layer and head ranges."""

    default: str
    layers: int = 1
    heads: int = 1
    block: tuple[int, int] | None = None  # None: the compiler's default, 128 x 128
    causal: bool | None = None  # declared causality; None: inferred from the pattern
    overrides: tuple[Override, ...] = ()
    # default values of $parameters, sorted; compared by ``params_key`` (10**16 == 1e16, yet they differ)
    params: tuple[tuple[str, int | float], ...] = field(default=(), compare=False)
    description: str = ""
    source: str | None = field(default=None, compare=False)  # file it was read from
    kv_heads: int | None = None  # grouped-query attention's KV heads; None: one per query head
    _params_key: tuple = field(init=False, repr=False)  # what equality and hashing see of ``params``

    def __post_init__(self) -> None:
        where = self.source or "stack"
        # A description is one line of prose: fold its white space (YAML would fold line breaks
        # such as U+0085 on the way back, and a stack must survive a round trip through YAML).
        object.__setattr__(self, "description", " ".join(str(self.description).split()))
        params = self.params if isinstance(self.params, Mapping) else _pairs(self.params, f"{where}: params")
        object.__setattr__(self, "params", check_params(params, f"{where}: params"))
        object.__setattr__(self, "_params_key", params_key(self.params))
        _positive_int(self.layers, f"{where}: layers")
        _positive_int(self.heads, f"{where}: heads")
        if self.kv_heads is None:  # stored as the count, so that kv_heads=heads and None compare equal
            object.__setattr__(self, "kv_heads", self.heads)
        _positive_int(self.kv_heads, f"{where}: kv_heads")
        if self.heads % self.kv_heads:
            raise StackError(f"{self.kv_heads} KV heads do not divide {self.heads} query heads "
                             "(grouped-query attention gives each KV head as many query heads)",
                             where=f"{where}: kv_heads")
        require(self.layers * self.heads, MAX_HEADS,
                f"{where}: layers x heads ({self.layers} x {self.heads})", "a stack describes one model")
        require(len(self.overrides), MAX_OVERRIDES, f"{where}: override rules",
                "write per-layer or per-head variation with l and h inside one expression")
        bare = self.source is None and not self.overrides and self.layers == self.heads == 1
        _checked_parse(self.default, None if bare else f"{where}: default")
        for index, rule in enumerate(self.overrides):
            if not isinstance(rule, Override):
                raise StackError(f"an override must be an Override (Override(expr, layers=(a, b), "
                                 f"heads=(c, d))), got {brief(rule)}; from a dict such as a YAML "
                                 f"file's, use Stack.from_dict", where=f"{where}: overrides[{index}]")
            _checked_parse(rule.expr, f"{where}: overrides[{index}].expr")
            for axis, count in (("layers", self.layers), ("heads", self.heads)):
                span = getattr(rule, axis)
                if span is not None and not 0 <= span[0] < span[1] <= count:
                    problem = ("is empty (a half-open range a:b needs a < b)" if span[0] >= span[1]
                               else f"is outside 0:{count}")
                    raise StackError(f"{span[0]}:{span[1]} {problem}",
                                     where=f"{where}: overrides[{index}].{axis}")

    @staticmethod
    def single(expr: str | ast.Pattern) -> Stack:
        """A one-layer, one-head stack of a bare expression."""
        return Stack(expr if isinstance(expr, str) else unparse(expr))

    def rule_at(self, layer: int, head: int) -> tuple[str, str]:
        """(expression text, where it is written) for one (layer, head); later overrides win."""
        for index in range(len(self.overrides) - 1, -1, -1):
            if self.overrides[index].covers(layer, head):
                return self.overrides[index].expr, f"overrides[{index}].expr"
        return self.default, "default"

    def expressions(self) -> set[str]:
        return {self.default, *(rule.expr for rule in self.overrides)}

    def reads_length(self) -> bool:
        """Whether a row's keys depend on the length ``n``: some expression uses ``n``, or
        ``random()``, whose draw is over the key blocks there are. A decoder must then say the length
        it serves (``CompiledPattern.prefix``); other stacks give row ``t`` the same keys at any n.

        >>> Stack("causal & window(512)").reads_length(), Stack("causal & window(n // 4)").reads_length()
        (False, True)
        """
        return any((isinstance(node, ast.Name) and node.id == "n")
                   or (isinstance(node, ast.Primitive) and node.name == "random")
                   for text in self.expressions() for node in ast.walk(parse(text)))

    # ---- grouped-query attention ---------------------------------------------------------------------

    def kv_head_of(self, head: int) -> int:
        """The KV head query head ``head`` reads, as PyTorch's ``enable_gqa`` groups them.

        >>> Stack("causal", heads=8, kv_heads=2).kv_head_of(5)
        1
        """
        return head // (self.heads // self.kv_heads)

    def kv_group(self, kv_head: int) -> range:
        """The query heads that read ``kv_head``: a contiguous run of ``heads // kv_heads``.

        >>> Stack("causal", heads=8, kv_heads=2).kv_group(1)
        range(4, 8)
        """
        size = self.heads // self.kv_heads
        return range(kv_head * size, (kv_head + 1) * size)

    # ---- YAML --------------------------------------------------------------------------------------

    @staticmethod
    def from_dict(data: Mapping, source: str | None = None) -> Stack:
        """A stack from parsed YAML; every fault names the file and the key."""
        where = source or "stack"
        if not isinstance(data, Mapping):
            raise StackError(f"a stack is a mapping with keys {', '.join(_KEYS)}", where=where)
        unknown = [key for key in data if key not in _KEYS]
        if unknown:
            raise StackError(f"unknown key '{unknown[0]}'; a stack has {', '.join(_KEYS)}", where=where)
        if "default" not in data:
            raise StackError("missing key 'default' (the expression used where no override applies)",
                             where=where)
        layers = _positive_int(data.get("layers", 1), f"{where}: layers")
        heads = _positive_int(data.get("heads", 1), f"{where}: heads")
        overrides = data.get("overrides") or []
        if not isinstance(overrides, list):
            raise StackError("overrides must be a list of {layers, heads, expr}", where=where)
        return Stack(
            default=_expression(data["default"], f"{where}: default"),
            layers=layers,
            heads=heads,
            block=_stack_block(data.get("block"), f"{where}: block"),
            causal=_optional_bool(data.get("causal"), f"{where}: causal"),
            overrides=tuple(_override(rule, i, layers, heads, where) for i, rule in enumerate(overrides)),
            params=check_params(data.get("params") or {}, f"{where}: params"),
            description=str(data.get("description", "")),
            source=source,
            kv_heads=data.get("kv_heads"),
        )

    def to_dict(self) -> dict:
        """The stack as YAML-ready data; ``Stack.from_dict(s.to_dict()) == s``."""
        data: dict = {"layers": self.layers, "heads": self.heads}
        if self.kv_heads != self.heads:
            data["kv_heads"] = self.kv_heads
        if self.block is not None:
            data["block"] = self.block[0] if self.block[0] == self.block[1] else list(self.block)
        if self.causal is not None:
            data["causal"] = self.causal
        data["default"] = self.default
        if self.overrides:
            data["overrides"] = [
                {**({"layers": _range_text(r.layers)} if r.layers else {}),
                 **({"heads": _range_text(r.heads)} if r.heads else {}), "expr": r.expr}
                for r in self.overrides
            ]
        if self.params:
            data["params"] = {name: list(v) if isinstance(v, tuple) else v for name, v in self.params}
        if self.description:
            data["description"] = self.description
        return data


def as_stack(spec: str | os.PathLike | ast.Pattern | Stack) -> Stack:
    """The stack a user means: a ``Stack``; a path of a ``.yaml``/``.yml`` file; an expression
    (a stack of one layer and one head); or a syntax tree. Text that does not parse but names a
    directory or a file, or looks like a path, is said to be one rather than shown as a bad
    expression.

    >>> as_stack("causal & window(4)").layers, as_stack("conf/pattern/longformer.yaml").layers
    (1, 12)
    """
    if isinstance(spec, Stack):
        return spec
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        return load_stack(spec)
    if isinstance(spec, (ast.Primitive, ast.Union, ast.Intersect, ast.Difference, ast.Complement)):
        return Stack.single(unparse(spec))
    if not isinstance(spec, str):
        raise PatternMeaningError(f"cannot compile a {type(spec).__name__}: pass an expression, a syntax "
                                  "tree, a Stack or the path of a stack YAML file")
    try:
        return Stack.single(spec)
    except PatternError:
        if os.path.isdir(spec):
            raise StackError("is a directory, not a pattern or a stack file", where=spec) from None
        if os.path.exists(spec):
            raise StackError("is a file but not a stack file (stack files end in .yaml or .yml)",
                             where=spec) from None
        if "/" in spec and not set(spec) & set("()&|~ "):
            raise StackError("no such stack file, and not a pattern expression", where=spec) from None
        raise


def load_stack(path: str | os.PathLike) -> Stack:
    """Read a stack from a YAML file (at most ``MAX_STACK_BYTES``, UTF-8, no duplicate keys).

    >>> load_stack("conf/pattern/longformer.yaml").rule_at(0, 0)
    ('causal & (window(256) | global(16))', 'default')
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STACK_BYTES + 1)
    except IsADirectoryError:
        raise StackError("is a directory, not a stack file", where=path) from None
    except OSError as err:
        raise StackError(f"cannot read stack file: {err.strerror}", where=path) from None
    if len(raw) > MAX_STACK_BYTES:
        raise StackError(f"the file is larger than {MAX_STACK_BYTES:,} bytes; a stack is configuration, "
                         "not data", where=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StackError(f"not UTF-8 text (byte {err.start} is {raw[err.start]:#04x})", where=path) from None
    return Stack.from_dict(load_yaml(text, path), source=path)


def load_yaml(text: str, where: str):
    """Parse YAML safely and within bounds: nesting at most ``MAX_YAML_DEPTH`` deep (checked on the
    event stream, before PyYAML's recursive composer runs), at most ``MAX_YAML_NODES`` nodes with
    aliases expanded (an alias bomb is refused before it is built or printed), no recursive alias,
    no duplicate key (YAML would keep the last one silently).

    >>> load_yaml("layers: 2\\nlayers: 3\\n", "s.yaml")
    Traceback (most recent call last):
      ...
    patternc.errors.StackError: s.yaml: line 2: duplicate key 'layers' (first on line 1)
    """
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):  # iterative: no recursion
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise StackError(f"line {event.start_mark.line + 1}: nested more than {MAX_YAML_DEPTH} "
                                     "levels deep", where=where)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_nodes(node, where)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise StackError(f"not valid YAML: {err}", where=where) from None
    except (ValueError, OverflowError) as err:  # PyYAML's own constructors: an int of 5,000 digits
        if isinstance(err, StackError):
            raise
        reason = str(err).split(";")[0][:200]  # "Exceeds the limit (4300 digits) ...: value has 5000 digits"
        raise StackError(f"a value cannot be read: {reason}", where=where) from None


def _check_nodes(root: yaml.Node, where: str) -> None:
    """Count nodes as aliases expand them (each shared node counted once per use, computed once)
    and refuse duplicate keys; iterative, so deep nesting cannot overflow the stack."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    todo: list[tuple[yaml.Node, bool]] = [(root, False)]
    while todo:
        node, children_done = todo.pop()
        key = id(node)
        if key in sizes:
            continue
        kids = ([item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(kid)] for kid in kids)
            if sizes[key] > MAX_YAML_NODES:
                raise StackError(f"the YAML expands to more than {MAX_YAML_NODES:,} nodes (aliases "
                                 "counted each time they are used); a stack is a few dozen", where=where)
            continue
        if key in open_nodes:
            raise StackError(f"line {node.start_mark.line + 1}: a recursive alias (a node that contains "
                             "itself)", where=where)
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(node, where)
        todo.append((node, True))
        todo.extend((kid, False) for kid in kids if id(kid) not in sizes)


def _check_unique_keys(node: yaml.MappingNode, where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            line = key.start_mark.line + 1
            first = seen.setdefault((key.tag, key.value), line)
            if first != line:
                raise StackError(f"line {line}: duplicate key {brief(key.value)} (first on line {first})",
                                 where=where)


def parse_block(value, where: str = "block") -> tuple[int, int]:
    """``128``, ``[64, 128]`` or ``"64,128"`` -> ``(bq, bk)``."""
    if isinstance(value, str):
        try:
            value = [int(part.strip()) for part in value.split(",")]
        except ValueError:
            raise PatternMeaningError(
                f"block must be an integer or BQ,BK, got {brief(value)}", where=where
            ) from None
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise PatternMeaningError(f"block must be one size or [bq, bk], got {brief(list(value))}",
                                      where=where)
        return _block_size(value[0], where), _block_size(value[1], where)
    size = _block_size(value, where)
    return size, size


def _stack_block(value, where: str) -> tuple[int, int] | None:
    """``parse_block`` for a stack file: a bad block is a malformed file, so a ``StackError``."""
    if value is None:
        return None
    try:
        return parse_block(value, where)
    except PatternMeaningError as err:
        raise StackError(err.message, where=err.where) from None


def _block_size(value, where: str) -> int:
    return check_int(value, "a block size", where=where)


def _checked_parse(text: str, where: str | None) -> ast.Pattern:
    try:
        return parse(text)
    except PatternError as err:
        raise err.with_source(where=where) from None


def _expression(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StackError(f"expected a pattern expression (text), got {brief(value)}", where=where)
    return value.strip()


def _positive_int(value, where: str) -> int:
    return check_int(value, None, error=StackError, where=where)


def _optional_bool(value, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise StackError(f"expected true or false, got {brief(value)}", where=where)
    return value


def _range(value, count: int, where: str) -> tuple[int, int]:
    """``3`` -> (3, 4); ``"4:8"`` -> (4, 8); ``"4:"`` -> (4, count); ``":2"`` -> (0, 2)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value + 1
    if isinstance(value, str) and value.count(":") == 1:
        start, stop = (part.strip() for part in value.split(":"))
        try:
            return int(start) if start else 0, int(stop) if stop else count
        except ValueError:
            pass
    raise StackError(f"expected an index or a half-open range \"a:b\", got {brief(value)}", where=where)


def index_runs(values) -> list[tuple[int, int]]:
    """Sorted layer or head indices as inclusive runs of consecutive ones.

    >>> index_runs([0, 1, 2, 5])
    [(0, 2), (5, 5)]
    """
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return [(a, b) for a, b in runs]


def layer_spans(values) -> str:
    """Layer (or head) indices as runs, for messages.

    >>> layer_spans([0, 1, 2, 5])
    '0-2, 5'
    """
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in index_runs(values))


def _range_text(span: tuple[int, int]) -> int | str:
    return span[0] if span[1] == span[0] + 1 else f"{span[0]}:{span[1]}"


def _override(rule, index: int, layers: int, heads: int, where: str) -> Override:
    at = f"{where}: overrides[{index}]"
    if not isinstance(rule, Mapping):
        raise StackError("expected a mapping with keys layers, heads, expr", where=at)
    unknown = [key for key in rule if key not in _OVERRIDE_KEYS]
    if unknown:
        raise StackError(f"unknown key '{unknown[0]}'; an override has layers, heads, expr", where=at)
    if "expr" not in rule:
        raise StackError("missing key 'expr'", where=at)
    return Override(
        expr=_expression(rule["expr"], f"{at}.expr"),
        layers=None if rule.get("layers") is None else _range(rule["layers"], layers, f"{at}.layers"),
        heads=None if rule.get("heads") is None else _range(rule["heads"], heads, f"{at}.heads"),
    )


def _pairs(values, where: str) -> dict:
    try:
        return dict(values)
    except (TypeError, ValueError):
        raise StackError(f"params must map parameter names to numbers, got {brief(values)}",
                         where=where) from None


def params_key(params: tuple[tuple[str, int | float | tuple[int, ...]], ...]) -> tuple:
    """What a cache keys ``check_params``' pairs on: the values with their types, floats by their
    exact bits. Python's ``10**16 == 1e16`` (and their hashes agree), but ``$w + 3 - $w`` is 3 for
    one and 4 for the other, so a cache keyed on the values alone serves one's layout to the other.

    >>> params_key((("w", 10**16),)) == params_key((("w", 1e16),))
    False
    """
    return tuple((name, type(value).__name__, value.hex() if isinstance(value, float) else value)
                 for name, value in params)


def check_params(values, where: str = "params") -> tuple[tuple[str, int | float], ...]:
    """``$parameter`` values as a stack holds them: sorted (name, number) pairs. The one check of
    parameters, for a stack file's ``params`` and for ``compile(..., params=)`` alike.

    >>> check_params({"w": 512, "a": np.float64(0.5)})
    (('a', 0.5), ('w', 512))
    """
    if not isinstance(values, Mapping):
        raise StackError("params must map parameter names to numbers", where=where)
    out = []
    for name, value in values.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise StackError(f"parameter name {brief(name)} is not an identifier (write w, not $w)",
                             where=where)
        if isinstance(value, (list, tuple)):  # a list of integers, for a list argument: documents($starts)
            if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in value):
                raise StackError(f"parameter {name} must be a number or a list of integers, got "
                                 f"{brief(value)}", where=where)
            out.append((name, tuple(int(v) for v in value)))
            continue
        if isinstance(value, bool) or not isinstance(value, Real):
            raise StackError(f"parameter {name} must be a number, got {brief(value)}", where=where)
        out.append((name, int(value) if isinstance(value, Integral) else float(value)))
    return tuple(sorted(out))
