"""What every proxy task provides: seeded batches of token sequences with labels at answer positions.

A task is a generator, not a dataset: ``task.batch(rng, size)`` draws ``size`` fresh sequences from a
``numpy.random.Generator``, so training never sees the same sequence twice and held-out data is
simply another seed. Labels are ``IGNORE`` everywhere except at answer positions, where the model
must predict the answer token from the sequence so far (a decoder reads left to right). Every
answer belongs to a bucket (a query-to-key distance range, a margin, ...), so accuracy can be
reported per bucket: the buckets are what separate one pattern from another.

>>> from search.config import MQARConfig
>>> from search.tasks import make_task
>>> task = make_task(MQARConfig(n=128))
>>> batch = task.batch(np.random.default_rng(0), 32)
>>> batch.tokens.shape, task.bucket_names
((32, 128), ('2-15', '16-47', '48-127'))
>>> (batch.labels != IGNORE).sum(axis=1)[:4], bool(((batch.labels != IGNORE) == (batch.buckets >= 0)).all())
(array([8, 8, 8, 8]), True)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

__all__ = ["IGNORE", "Batch", "Task", "bucket_of"]

IGNORE = -100  # label of positions that are not answers (torch's cross_entropy ignore_index)


@dataclass(frozen=True)
class Batch:
    """``tokens`` (B, n) int64; ``labels`` (B, n) int64, ``IGNORE`` off answer positions;
    ``buckets`` (B, n) int64, the bucket of each answer and -1 elsewhere."""

    tokens: np.ndarray
    labels: np.ndarray
    buckets: np.ndarray


class Task(ABC):
    """A proxy task: ``vocab`` tokens, sequences of length ``n``, answers in named buckets."""

    name: str
    n: int
    vocab: int
    bucket_names: tuple[str, ...]
    chance: float  # accuracy of the best guess that ignores the sequence (uniform over answers)

    @abstractmethod
    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        """``size`` fresh sequences drawn from ``rng``."""


def bucket_of(values: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Index of the half-open bucket ``[edges[i], edges[i + 1])`` holding each value.

    >>> bucket_of(np.array([1, 31, 32, 200]), (1, 32, 64, 256)).tolist()
    [0, 0, 1, 2]
    """
    return np.searchsorted(np.asarray(edges), values, side="right") - 1


def bucket_names(edges: tuple[int, ...], unit: str = "") -> tuple[str, ...]:
    """``(1, 32, 64)`` -> ``("1-31", "32-63")``: inclusive ranges, as a reader says them."""
    return tuple(f"{lo}-{hi - 1}{unit}" for lo, hi in pairwise(edges))
