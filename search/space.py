"""Search spaces: a template expression over ``$params``, per-layer choices, turned into stacks.

A space (``conf/space/*.yaml``, schema ``SpaceConfig``) names its parameters with their
distributions and a template written relative to ``n``. For a trial, ``suggest`` asks Optuna for
every parameter (and, with ``layer_choices``, which expression each layer uses) and returns the
candidate as a ``Stack`` whose ``params`` hold the values, so the same stack compiles at the proxy
length and at the target length, and its YAML drops into ``conf/pattern/`` unchanged.

.. code-block:: yaml

    template: causal & (window(ceil($w * n)) | stride(round(n ** $a)))
    params:
      w: {type: float, low: 0.01, high: 0.25, log: true}
      a: {type: float, low: 0.3, high: 0.7}
    layer_choices: [template, causal]     # each layer: the template, or dense causal

>>> stack = suggest(trial, space)         # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from patternc.errors import PatternError, StackError
from patternc.lang import parse
from patternc.lang.ast import Param, walk
from patternc.stack import Override, Stack
from search.config import ParamSpec, SpaceConfig

__all__ = ["TEMPLATE", "build_stack", "check_space", "enqueue_params", "reference_stack", "suggest"]

TEMPLATE = "template"  # in layer_choices: the space's template


def check_space(space: SpaceConfig) -> None:
    """Every fault of a space, named by key, before any trial runs (``StackError``)."""
    where = f"space {space.name}"
    try:
        used = {node.id for node in walk(parse(space.template)) if isinstance(node, Param)}
    except PatternError as error:
        raise StackError(f"space.template: {error}", where=where) from None
    missing, unused = used - set(space.params), set(space.params) - used
    if missing:
        raise StackError(f"space.template uses ${', $'.join(sorted(missing))} but space.params does not "
                         f"define {'it' if len(missing) == 1 else 'them'}", where=where)
    if unused:
        raise StackError(f"space.params defines {', '.join(sorted(unused))}, which space.template never "
                         f"uses", where=where)
    for name, spec in space.params.items():
        _check_spec(name, spec, where)
    for i, choice in enumerate(space.layer_choices):
        if choice != TEMPLATE:
            try:
                parse(choice)
            except PatternError as error:
                raise StackError(f"space.layer_choices[{i}]: {error}", where=where) from None
    for key in ("layers", "heads", "block", "target_block"):
        if getattr(space, key) < 1:
            raise StackError(f"space.{key} must be at least 1, got {getattr(space, key)}", where=where)
    if not 8 <= space.n_proxy <= space.n_target:
        raise StackError(f"need 8 <= space.n_proxy <= space.n_target, got {space.n_proxy} and "
                         f"{space.n_target}", where=where)
    for block, n in (("block", "n_proxy"), ("target_block", "n_target")):
        if getattr(space, block) > getattr(space, n):
            raise StackError(f"space.{block} = {getattr(space, block)} is larger than space.{n} = "
                             f"{getattr(space, n)}: one block would hold the whole sequence", where=where)
    if not 0 < space.density_budget <= 1:
        raise StackError(f"space.density_budget is a fraction of dense causal's block density in (0, 1], "
                         f"got {space.density_budget}", where=where)
    for name, ref in space.references.items():
        if not isinstance(ref, dict) or set(ref) - {"params", "layers", "expr", "cites"} or (
                "expr" in ref) == ("params" in ref):
            raise StackError(f"space.references.{name} must be {{expr: ...}} or {{params: {{...}}, "
                             f"layers: [...]}} (and optional cites), got {ref!r}", where=where)


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


def suggest(trial: optuna.Trial, space: SpaceConfig) -> Stack:
    """The trial's candidate: Optuna picks each parameter and each layer's choice."""
    values = {name: _suggest(trial, name, spec) for name, spec in space.params.items()}
    layers = [trial.suggest_categorical(f"layer{l}", list(space.layer_choices)) if space.layer_choices
              else TEMPLATE for l in range(space.layers)]
    return build_stack(space, values, layers)


def build_stack(space: SpaceConfig, values: dict[str, Any], layers: list[str]) -> Stack:
    """The stack of a template, parameter values and per-layer choices ("template" or an expression)."""
    overrides = tuple(Override(expr=choice, layers=(l, l + 1)) for l, choice in enumerate(layers)
                      if choice != TEMPLATE)
    params = tuple(sorted((name, _number(value)) for name, value in values.items()))
    return Stack(default=space.template, layers=space.layers, heads=space.heads, block=(space.block,) * 2,
                 causal=None, overrides=overrides, params=params)


def reference_stack(space: SpaceConfig, name: str, trial: optuna.Trial | None = None) -> Stack:
    """A classic pattern of the space: ``{expr}`` on every layer, or ``{params, layers}`` in the
    space's own terms (suggested through ``trial`` so that Optuna records them as the trial's)."""
    ref = space.references[name]
    if "expr" in ref:
        return Stack(default=ref["expr"], layers=space.layers, heads=space.heads, block=(space.block,) * 2)
    if trial is None:
        return build_stack(space, dict(ref["params"]), list(ref.get("layers") or [TEMPLATE] * space.layers))
    return suggest(trial, space)  # the enqueued values come back from suggest_*


def enqueue_params(space: SpaceConfig, name: str) -> dict[str, Any]:
    """The Optuna params that make ``suggest`` rebuild reference ``name`` ({} for an expr reference)."""
    ref = space.references[name]
    if "expr" in ref:
        return {}
    params = dict(ref["params"])
    if space.layer_choices:
        layers = list(ref.get("layers") or [TEMPLATE] * space.layers)
        params.update({f"layer{l}": choice for l, choice in enumerate(layers)})
    return params


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StackError(f"a template parameter must be a finite number, got {value!r}")
    return value
