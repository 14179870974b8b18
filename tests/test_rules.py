"""The simplification table: each rule fires where its identity applies, and only there."""

from __future__ import annotations

import pytest

from patternc.lang import parse
from patternc.lower.algebra import Complement, Difference, Intersect, Union
from patternc.lower.bind import lower
from patternc.lower.grid import Grid
from patternc.lower.rules import simplify
from patternc.primitives.offsets import Band, Stride
from patternc.primitives.positions import Everything, Global, Nothing

GRID = Grid(1000, 64, 64)  # causal is Band(0, 1000) at this length


@pytest.mark.parametrize(
    ("expr", "lowered"),
    [
        pytest.param("causal & window(4)", Band(0, 3), id="band-and-band"),
        pytest.param("band(0, 9) & band(5, 20)", Band(5, 9), id="overlapping-bands-intersect"),
        pytest.param("band(0, 9) & band(11, 20)", Nothing(), id="disjoint-bands-intersect-to-none"),
        pytest.param("band(0, 9) | band(10, 20)", Band(0, 20), id="touching-bands-unite"),
        pytest.param("stride(3) | stride(3)", Stride(3), id="union-idempotent"),
        pytest.param("global(4) & global(4)", Global(4), id="intersection-idempotent"),
        pytest.param("stride(3) | all", Everything(), id="union-with-all"),
        pytest.param("none | stride(3)", Stride(3), id="union-with-none"),
        pytest.param("stride(3) & none", Nothing(), id="intersection-with-none"),
        pytest.param("all & stride(3)", Stride(3), id="intersection-with-all"),
        pytest.param("stride(3) - none", Stride(3), id="difference-of-none"),
        pytest.param("none - stride(3)", Nothing(), id="difference-from-none"),
        pytest.param("stride(3) - all", Nothing(), id="difference-of-all"),
        pytest.param("~~stride(3)", Stride(3), id="double-complement"),
        pytest.param("~all", Nothing(), id="complement-of-all"),
        pytest.param("~none", Everything(), id="complement-of-none"),
        pytest.param("causal & window(4) & window(2)", Band(0, 1), id="rules-compose"),
    ],
)
def test_rule_fires(expr, lowered):
    assert lower(parse(expr), GRID) == lowered


@pytest.mark.parametrize(
    "node",
    [
        pytest.param(Union(Band(0, 3), Band(5, 9)), id="bands-with-a-gap-stay-apart"),
        pytest.param(Intersect(Band(0, 3), Stride(2)), id="band-and-stride"),
        pytest.param(Difference(Stride(2), Band(0, 3)), id="difference-of-distinct"),
        pytest.param(Complement(Stride(2)), id="single-complement"),
    ],
)
def test_rule_does_not_fire(node):
    assert simplify(node) == node
