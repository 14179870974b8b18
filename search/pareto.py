"""The Pareto front as pure functions on tuples of objective values, independent of Optuna.

A point dominates another when it is no worse in every objective and strictly better in at least
one, each objective read in its own direction (``"maximize"`` or ``"minimize"``). Two identical
points do not dominate each other, so both stay on the front.

>>> pareto_front([(0.9, 0.5), (0.8, 0.2), (0.7, 0.3)], ("maximize", "minimize"))
[0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["SENSES", "dominated_pairs", "dominates", "pareto_front"]

SENSES = ("maximize", "minimize")  # the two senses an objective can have


def _signs(directions: Sequence[str], dims: int) -> np.ndarray:
    """+1 for an objective to minimize, -1 for one to maximize: multiplying by the sign turns every
    objective into one to minimize, so dominance becomes a plain component-wise comparison."""
    if len(directions) != dims:
        raise ValueError(f"{len(directions)} directions for points of {dims} objectives")
    bad = [d for d in directions if d not in SENSES]
    if bad:
        raise ValueError(f"direction {bad[0]!r} is neither 'maximize' nor 'minimize'")
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def _as_array(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """(n, d) array of the points, every objective turned into one to minimize."""
    rows = [tuple(float(v) for v in p) for p in points]
    dims = len(rows[0]) if rows else len(directions)
    if any(len(r) != dims for r in rows):
        raise ValueError("every point needs the same number of objectives")
    if any(math.isnan(v) for r in rows for v in r):
        # NaN compares false both ways, so it would sit on the front unchallenged: refuse it.
        raise ValueError("a point has a NaN objective; leave such trials out of the front")
    return np.array(rows, dtype=float).reshape(len(rows), dims) * _signs(directions, dims)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is no worse than ``b`` in every objective and strictly better in one.

    >>> dominates((0.9, 0.2), (0.8, 0.2), ("maximize", "minimize"))
    True
    >>> dominates((0.9, 0.2), (0.9, 0.2), ("maximize", "minimize"))
    False
    """
    x, y = _as_array([a, b], directions)
    return bool(np.all(x <= y) and np.any(x < y))


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the points that no other point dominates. O(n^2 d), vectorised per
    point: a study has at most a few thousand trials.

    >>> pareto_front([(1, 1), (1, 1), (0, 2)], ("maximize", "minimize"))
    [0, 1]
    """
    pts = _as_array(points, directions)  # (n, d), to minimize
    front = []
    for i, p in enumerate(pts):
        no_worse = np.all(pts <= p, axis=1)  # (n,)
        better = np.any(pts < p, axis=1)  # (n,)
        if not np.any(no_worse & better):
            front.append(i)
    return front


def dominated_pairs(winners: Sequence[Sequence[float]], losers: Sequence[Sequence[float]],
                    directions: Sequence[str]) -> list[tuple[int, int]]:
    """Every ``(i, j)`` where ``winners[i]`` dominates ``losers[j]``: which front patterns beat which
    classic ones.

    >>> dominated_pairs([(0.9, 0.2)], [(0.8, 0.3), (0.95, 0.1)], ("maximize", "minimize"))
    [(0, 0)]
    """
    return [(i, j) for i, a in enumerate(winners) for j, b in enumerate(losers)
            if dominates(a, b, directions)]
