"""Search spaces: a template expression over ``$params``, per-layer choices, turned into stacks.

A space (``conf/space/*.yaml``, schema ``SpaceConfig``) names its parameters with their
distributions and a template written relative to ``n``. For a trial, ``suggest`` asks Optuna for
every parameter (and, with ``layer_choices``, which expression each proxy layer, and with it its
group of target layers, uses) and returns the candidate as two stacks whose ``params`` hold the
values: the target's compiles at ``target.n`` and drops into ``conf/pattern/`` unchanged.

.. code-block:: yaml

    template: causal & (window(ceil($w * n)) | stride(round(n ** $a)))
    params:
      w: {type: float, low: 0.01, high: 0.25, log: true}
      a: {type: float, low: 0.3, high: 0.7}
    layer_choices: [template, causal]     # each layer: the template, or dense causal
    head_choices: [template, causal]      # each head too (DuoAttention's streaming or full heads);
                                          # a layer's choice other than the template covers its heads

A space describes a *target* (the deployed model: its depth, heads, length and tile, where reach,
density and cost are checked) and a *proxy* (the small model trained for accuracy, at its own
length); ``build`` maps one onto the other (see its docstring).

>>> candidate = build(SpaceConfig(template="causal & window(ceil($w * n))"), {"w": 0.1}, ["template"] * 2)
>>> candidate.target.layers, candidate.proxy.layers
(12, 2)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from patternc import Override, PatternError, Stack, StackError, ast, parse, unparse
from search.config import ParamSpec, SpaceConfig

__all__ = ["TEMPLATE", "Candidate", "bind_names", "build", "check_space", "design", "enqueue_params",
           "head_param", "layer_group", "reference", "suggest"]

TEMPLATE = "template"  # in layer_choices: the space's template


def check_space(space: SpaceConfig) -> None:
    """Every fault of a space, named by key, before any trial runs (``StackError``)."""
    where = f"space {space.name}"
    used = _params_of(space.template, "space.template", where)
    for key in ("layer_choices", "head_choices"):
        for i, choice in enumerate(getattr(space, key)):
            if choice != TEMPLATE:
                used |= _params_of(choice, f"space.{key}[{i}]", where)
    missing, unused = used - set(space.params), set(space.params) - used
    if missing:
        raise StackError(f"the space uses ${', $'.join(sorted(missing))} but space.params does not "
                         f"define {'it' if len(missing) == 1 else 'them'}", where=where)
    if unused:
        raise StackError(f"space.params defines {', '.join(sorted(unused))}, which space.template never "
                         f"uses (nor any layer or head choice)", where=where)
    for name, spec in space.params.items():
        _check_spec(name, spec, where)
    target, proxy = space.target, space.proxy
    for part, cfg in (("target", target), ("proxy", proxy)):
        for key in ("layers", "heads", "block", "n", *(("head_dim",) if part == "target" else ())):
            if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
                raise StackError(f"space.{part}.{key} must be an integer >= 1, got {getattr(cfg, key)!r}",
                                 where=where)
        if cfg.block > cfg.n:
            raise StackError(f"space.{part}.block = {cfg.block} is larger than space.{part}.n = {cfg.n}: one "
                             "block would hold the whole sequence", where=where)
    if target.kv_heads is not None and (target.kv_heads < 1 or target.heads % target.kv_heads):
        raise StackError(f"space.target.kv_heads must divide space.target.heads = {target.heads}, got "
                         f"{target.kv_heads}", where=where)
    for key, what in (("layers", "deeper"), ("heads", "wider"), ("n", "longer")):
        if getattr(proxy, key) > getattr(target, key):
            raise StackError(f"space.proxy.{key} = {getattr(proxy, key)} is {what} than space.target.{key} "
                             f"= {getattr(target, key)}: the proxy stands for a part of the target",
                             where=where)
    if proxy.n < 8:
        raise StackError(f"space.proxy.n must be at least 8, got {proxy.n}", where=where)
    if not 0 < space.density_budget <= 1:
        raise StackError(f"space.density_budget is a fraction of dense causal's block density in (0, 1], "
                         f"got {space.density_budget}", where=where)
    # NaN, 0 or below would leave no trial feasible (an empty front); NaN fails 0 < budget too
    budget = space.kv_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget <= 1):
        raise StackError(f"space.kv_budget is a fraction of a dense KV cache's bytes in (0, 1], or null for "
                         f"no budget, got {budget}", where=where)
    for name, ref in space.references.items():
        if not isinstance(ref, dict) or set(ref) - {"params", "layers", "heads", "expr", "cites"} or (
                "expr" in ref) == ("params" in ref):
            raise StackError(f"space.references.{name} must be {{expr: ...}} or {{params: {{...}}, "
                             f"layers: [...], heads: [[...], ...]}} (and optional cites), got {ref!r}",
                             where=where)
        for key, value in (ref.get("params") or {}).items():
            spec = space.params.get(key)
            if spec is not None and spec.type == "categorical" and value not in spec.choices:
                raise StackError(f"space.references.{name}.params.{key} = {value!r} is not one of "
                                 f"space.params.{key}.choices {list(spec.choices)}", where=where)
        rows = ref.get("heads") or []
        if rows and (not space.head_choices or len(rows) != space.proxy.layers or any(
                len(row) != space.proxy.heads or set(row) - set(space.head_choices) for row in rows)):
            raise StackError(f"space.references.{name}.heads must be {space.proxy.layers} rows (one per "
                             f"proxy layer) of {space.proxy.heads} entries of space.head_choices "
                             f"{list(space.head_choices)}, got {rows!r}", where=where)


def _params_of(text: str, key: str, where: str) -> set[str]:
    """The ``$parameters`` an expression of the space uses; a ``StackError`` naming ``key`` when it
    does not parse."""
    try:
        return {node.id for node in ast.walk(parse(text)) if isinstance(node, ast.Param)}
    except PatternError as error:
        raise StackError(f"{key}: {error}", where=where) from None


def _check_spec(name: str, spec: ParamSpec, where: str) -> None:
    key = f"space.params.{name}"
    if spec.type == "categorical":
        if not spec.choices:
            raise StackError(f"{key}: a categorical parameter needs choices", where=where)
        return
    if spec.type not in ("int", "float"):
        raise StackError(f"{key}.type must be int, float or categorical, got {spec.type!r}", where=where)
    if spec.low is None or spec.high is None or not spec.low <= spec.high:
        raise StackError(f"{key} needs low <= high, got low={spec.low}, high={spec.high}", where=where)
    if spec.type == "int" and not (float(spec.low).is_integer() and float(spec.high).is_integer()):
        raise StackError(f"{key}: an int parameter needs integer low and high, got {spec.low}, {spec.high}",
                         where=where)
    if spec.log and spec.low <= 0:
        raise StackError(f"{key}: a log-scaled parameter needs low > 0, got {spec.low}", where=where)
    if spec.log and spec.step is not None:
        raise StackError(f"{key}: log and step cannot be combined (Optuna's rule)", where=where)


def _suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(name, list(spec.choices))
    if spec.type == "int":
        step = 1 if spec.step is None else int(spec.step)
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)


@dataclass(frozen=True)
class Candidate:
    """One point of a space as two stacks: ``target``, the deployed model's (reach, density and cost
    are its; its YAML drops into ``conf/pattern/``), and ``proxy``, the model trained for accuracy."""

    target: Stack
    proxy: Stack


def suggest(trial: optuna.Trial, space: SpaceConfig) -> Candidate:
    """The trial's candidate: Optuna picks each parameter and each proxy layer's choice."""
    values = {name: _suggest(trial, name, spec) for name, spec in space.params.items()}
    layers = [trial.suggest_categorical(f"layer{p}", list(space.layer_choices)) if space.layer_choices
              else TEMPLATE for p in range(space.proxy.layers)]
    heads = None
    if space.head_choices:
        heads = [[trial.suggest_categorical(head_param(p, j), list(space.head_choices))
                  for j in range(space.proxy.heads)] for p in range(space.proxy.layers)]
    return build(space, values, layers, heads)


def head_param(p: int, j: int) -> str:
    """The Optuna parameter of proxy layer ``p``, head ``j``'s choice (``space.head_choices``)."""
    return f"head{p}.{j}"


def layer_group(space: SpaceConfig, p: int) -> tuple[int, int]:
    """The target layers ``[start, stop)`` that proxy layer ``p`` stands for: the target's depth cut
    into ``proxy.layers`` consecutive groups, as even as they divide.

    >>> layer_group(SpaceConfig(), 1)
    (6, 12)
    """
    t, q = space.target.layers, space.proxy.layers
    return p * t // q, (p + 1) * t // q


def build(space: SpaceConfig, values: dict[str, Any], layers: list[str],
          heads: list[list[str]] | None = None) -> Candidate:
    """The candidate of parameter values, per-proxy-layer choices ("template" or an expression) and,
    with ``space.head_choices``, per-(proxy layer, proxy head) choices ``heads[p][j]``; a layer's
    choice other than the template covers all its heads.

    The target runs proxy layer ``p``'s choice on every layer of ``layer_group(p)``. The proxy runs,
    at its layer ``p`` and head ``j``, what the target runs at the middle layer of that group and the
    middle head of ``j``'s group of heads: ``l``, ``L``, ``h`` and ``H`` are bound to the target's
    values there, so a per-layer or per-head expression means at the proxy what it means at the
    target. ``n`` stays free: templates are written relative to it, and each compiles at its own.
    """
    params = tuple(sorted((name, _number(value)) for name, value in values.items()))
    target, proxy = space.target, space.proxy
    choice = [space.template if c == TEMPLATE else c for c in layers]
    # per (p, j): the layer's choice, else the head's (the template when there are no head choices)
    cell = [[choice[p] if choice[p] != space.template or not heads or heads[p][j] == TEMPLATE else heads[p][j]
             for j in range(proxy.heads)] for p in range(proxy.layers)]
    groups = [layer_group(space, p) for p in range(proxy.layers)]
    head_groups = [(j * target.heads // proxy.heads, (j + 1) * target.heads // proxy.heads)
                   for j in range(proxy.heads)]
    target_rules = tuple(Override(expr=choice[p], layers=groups[p]) for p in range(proxy.layers)
                         if choice[p] != space.template and groups[p][0] < groups[p][1])
    target_rules += tuple(Override(expr=cell[p][j], layers=groups[p], heads=head_groups[j])
                          for p in range(proxy.layers) for j in range(proxy.heads)
                          if choice[p] == space.template and cell[p][j] != space.template
                          and groups[p][0] < groups[p][1] and head_groups[j][0] < head_groups[j][1])
    proxy_rules = []
    for p, (start, stop) in enumerate(groups):
        for j, (first, last) in enumerate(head_groups):
            names = {"l": (start + stop - 1) // 2, "L": target.layers, "h": (first + last - 1) // 2,
                     "H": target.heads}
            text = bind_names(cell[p][j], names)
            if text != space.template:
                proxy_rules.append(Override(expr=text, layers=(p, p + 1), heads=(j, j + 1)))
    return Candidate(
        Stack(default=space.template, layers=target.layers, heads=target.heads, block=(target.block,) * 2,
              overrides=target_rules, params=params),
        Stack(default=space.template, layers=proxy.layers, heads=proxy.heads, block=(proxy.block,) * 2,
              overrides=tuple(proxy_rules), params=params))


def bind_names(text: str, names: dict[str, int]) -> str:
    """``text`` with the names ``l``, ``L``, ``h``, ``H`` it uses replaced by numbers (unchanged when it
    uses none).

    >>> bind_names("causal & window(64 * 2 ** (h % 4))", {"h": 5, "H": 8, "l": 0, "L": 12})
    'causal & window(64 * 2 ** (5 % 4))'
    """
    tree = parse(text)
    if not any(isinstance(node, ast.Name) and node.id in names for node in ast.walk(tree)):
        return text
    return unparse(_substitute(tree, names))


def _substitute(node, names: dict[str, int]):
    if isinstance(node, ast.Name) and node.id in names:
        return ast.Num(names[node.id], node.span)
    if not dataclasses.is_dataclass(node):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            changes[f.name] = tuple(_substitute(v, names) if not isinstance(v, tuple)
                                    else tuple(_substitute(x, names) for x in v) for v in value)
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _substitute(value, names)
    return dataclasses.replace(node, **changes)


def reference(space: SpaceConfig, name: str, trial: optuna.Trial | None = None) -> Candidate:
    """A classic pattern of the space: ``{expr}`` on every layer (written for the target), or
    ``{params, layers}`` in the space's own terms (suggested through ``trial`` so that Optuna
    records them as the trial's)."""
    ref = space.references[name]
    if "expr" in ref:
        return build(dataclasses.replace(space, template=ref["expr"], params={}), {},
                     [TEMPLATE] * space.proxy.layers)
    if trial is None:
        return build(space, dict(ref["params"]), list(ref.get("layers") or [TEMPLATE] * space.proxy.layers),
                     _reference_heads(space, ref))
    return suggest(trial, space)  # the enqueued values come back from suggest_*


def enqueue_params(space: SpaceConfig, name: str) -> dict[str, Any]:
    """The Optuna params that make ``suggest`` rebuild reference ``name`` ({} for an expr reference)."""
    ref = space.references[name]
    if "expr" in ref:
        return {}
    params = dict(ref["params"])
    if space.layer_choices:
        layers = list(ref.get("layers") or [TEMPLATE] * space.proxy.layers)
        params.update({f"layer{p}": choice for p, choice in enumerate(layers)})
    for p, row in enumerate(_reference_heads(space, ref) or ()):
        params.update({head_param(p, j): choice for j, choice in enumerate(row)})
    return params


def design(space: SpaceConfig, limit: int = 8,
           fits: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """An initial design of at most ``limit`` points that covers the space's structure before a
    sampler learns: each number parameter at both ends of its range (parameters alternate, so the
    ends are not all drawn together), each categorical's every choice, and each proxy layer's (and
    head's) every choice, in every combination the points allow (the first positions count in
    base ``len(choices)``: all-template, then one layer dense, ...).

    With ``fits`` (``search.objective.fits``: the space's budgets), a point that does not fit keeps
    its layer and head choices and takes the nearest parameter values that do (other ends, then
    middles, then other categorical choices); a structure no values fit is left out. A dense first
    layer, say, fits a density budget only with the template's sparsest values, which the
    alternating ends alone may never give it.

    >>> space = SpaceConfig(template="causal & window(ceil($w * n))", layer_choices=["template", "causal"],
    ...                     params={"w": ParamSpec(type="float", low=0.01, high=0.25)})
    >>> for point in design(space):
    ...     print(point)
    {'w': 0.01, 'layer0': 'template', 'layer1': 'template'}
    {'w': 0.25, 'layer0': 'causal', 'layer1': 'template'}
    {'w': 0.01, 'layer0': 'template', 'layer1': 'causal'}
    {'w': 0.25, 'layer0': 'causal', 'layer1': 'causal'}
    """
    positions = [f"layer{p}" for p in range(space.proxy.layers)] if space.layer_choices else []
    if space.head_choices:
        positions += [head_param(p, j) for p in range(space.proxy.layers) for j in range(space.proxy.heads)]
    base = len(space.layer_choices or space.head_choices or [TEMPLATE])
    sizes = [len(spec.choices) for spec in space.params.values() if spec.type == "categorical"]
    count = min(limit, max([2, *sizes, base ** len(positions) if base > 1 else 1]))
    points = []
    for i in range(count):
        point: dict[str, Any] = {}
        for k, (name, spec) in enumerate(space.params.items()):
            if spec.type == "categorical":
                point[name] = list(spec.choices)[(i + k) % len(spec.choices)]
            else:
                end = spec.low if (i + k) % 2 == 0 else spec.high
                point[name] = int(end) if spec.type == "int" else float(end)
        for q, name in enumerate(positions):
            choices = space.layer_choices if name.startswith("layer") else space.head_choices
            digit = (i // base ** q) % base if base ** q < count else (i + q) % base
            point[name] = list(choices)[digit % len(choices)]
        if fits is not None:
            # where no layer or head takes the template, its values change nothing: only the point
            uses_template = not positions or any(point[name] == TEMPLATE for name in positions)
            values = _nearest_values(space, point) if uses_template else [point]
            point = next((p for p in values if fits(p)), None)
        if point is not None and point not in points:
            points.append(point)
    return points


def _nearest_values(space: SpaceConfig, point: dict[str, Any], limit: int = 64) -> list[dict[str, Any]]:
    """``point`` and, after it, the points with its layer and head choices and other parameter
    values: each number at its other end or its middle (geometric on a log scale), each categorical
    at its other choices; fewest categorical changes first, then fewest number changes."""
    options: dict[str, list] = {}
    for name, spec in space.params.items():
        if spec.type == "categorical":
            options[name] = [point[name], *(c for c in spec.choices if c != point[name])]
            continue
        other = spec.high if point[name] == spec.low else spec.low
        middle = math.sqrt(spec.low * spec.high) if spec.log else (spec.low + spec.high) / 2
        number = round if spec.type == "int" else float
        options[name] = [point[name], number(other), number(middle)]
    kinds = [space.params[name].type == "categorical" for name in options]

    def changes(picks: tuple[int, ...]) -> tuple[int, int]:
        return (sum(p > 0 for p, categorical in zip(picks, kinds, strict=True) if categorical),
                sum(p > 0 for p in picks))

    combos = sorted(itertools.product(*(range(len(values)) for values in options.values())), key=changes)
    return [{**point, **{name: options[name][p] for name, p in zip(options, picks, strict=True)}}
            for picks in combos[:limit]]


def _reference_heads(space: SpaceConfig, ref: dict) -> list[list[str]] | None:
    """A reference's per-(proxy layer, head) choices: its ``heads`` rows, the template where it
    gives none; None when the space has no head choices."""
    if not space.head_choices:
        return None
    return [list(row) for row in ref["heads"]] if ref.get("heads") else \
        [[TEMPLATE] * space.proxy.heads for _ in range(space.proxy.layers)]


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StackError(f"a template parameter must be a finite number, got {value!r}")
    return value
