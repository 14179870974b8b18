"""Majority: an aggregation task whose answer depends on the whole sequence.

``groups`` groups of ``markers`` marker tokens each are scattered over the sequence among filler
tokens; each group's markers occur ``count`` times in all, with one marker strictly the most
frequent. The last ``groups`` positions are questions, one per group in random order: at each, the
model must name that group's most frequent marker. A pattern that cannot bring every position to
the end of the sequence, in some number of layers, is left guessing; a short window sees a handful
of markers at best. Answers are bucketed by margin (the winner's count minus the runner-up's):
margin 1 needs exact counting, larger margins forgive a rough estimate.

Token ids: ``0 .. noise - 1`` filler, then ``groups * markers`` markers, then ``groups`` questions.

>>> task = Majority(MajorityConfig(n=128))
>>> task.bucket_names, task.vocab, task.chance
(('margin 1', 'margin 2', 'margin 3+'), 36, 0.25)
>>> batch = task.batch(np.random.default_rng(0), 4)
>>> np.flatnonzero(batch.labels[0] != IGNORE)  # the 4 questions close the sequence
array([124, 125, 126, 127])
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from search.config import MajorityConfig
from search.errors import ConfigError
from search.tasks.base import IGNORE, Batch, Task, bucket_of

__all__ = ["Majority"]


class Majority(Task):
    def __init__(self, cfg: MajorityConfig):
        lo, hi = _pair(cfg.count, "task.count")
        edges = tuple(int(e) for e in cfg.margins)
        if cfg.groups < 1 or cfg.markers < 2 or cfg.noise < 1:
            raise ConfigError(f"task.groups >= 1, task.markers >= 2 and task.noise >= 1 are needed, got "
                             f"{cfg.groups}, {cfg.markers}, {cfg.noise}")
        if not 2 <= lo <= hi:
            raise ConfigError(f"task.count must be [lo, hi] with 2 <= lo <= hi (a strict winner needs two "
                             f"markers at least), got {list(cfg.count)}")
        if cfg.groups * hi > (cfg.n - cfg.groups) // 2:
            raise ConfigError(f"task.groups * task.count[1] = {cfg.groups * hi} markers must fit in half of "
                             f"the {cfg.n - cfg.groups} positions before the questions; raise task.n")
        if not edges or edges[0] != 1 or any(b <= a for a, b in pairwise(edges)):
            raise ConfigError(f"task.margins must be increasing lower bucket edges starting at 1, got "
                             f"{list(cfg.margins)}")
        self.cfg = cfg
        self.name = "majority"
        self.n = cfg.n
        self.count = (lo, hi)
        self.edges = edges
        self.first_marker = cfg.noise
        self.first_question = cfg.noise + cfg.groups * cfg.markers
        self.vocab = self.first_question + cfg.groups
        self.bucket_names = (*(f"margin {a}" if b == a + 1 else f"margin {a}-{b - 1}"
                                 for a, b in pairwise(edges)), f"margin {edges[-1]}+")
        self.chance = 1.0 / cfg.markers

    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        cfg, n, G, M = self.cfg, self.n, self.cfg.groups, self.cfg.markers
        body = n - G  # positions before the questions
        tokens = rng.integers(cfg.noise, size=(size, n))  # filler everywhere, then overwritten
        labels = np.full((size, n), IGNORE, np.int64)
        buckets = np.full((size, n), -1, np.int64)
        for b in range(size):
            counts = np.stack([self._counts(rng) for _ in range(G)])  # (G, M)
            marker_ids = self.first_marker + np.arange(G * M).reshape(G, M)
            markers = np.repeat(marker_ids.ravel(), counts.ravel())
            tokens[b, rng.choice(body, len(markers), replace=False)] = markers
            order = rng.permutation(G)  # which group each question asks about
            tokens[b, body:] = self.first_question + order
            ranked = np.sort(counts, axis=1)
            margin = ranked[:, -1] - ranked[:, -2]  # (G,) >= 1
            labels[b, body:] = marker_ids[order, counts[order].argmax(axis=1)]
            buckets[b, body:] = bucket_of(margin[order], self.edges)  # the last bucket is open-ended
        return Batch(tokens.astype(np.int64), labels, buckets)

    def _counts(self, rng: np.random.Generator) -> np.ndarray:
        """Counts of one group's markers with a strict winner (ties are drawn again)."""
        lo, hi = self.count
        M = self.cfg.markers
        while True:
            counts = rng.multinomial(int(rng.integers(lo, hi + 1)), np.full(M, 1.0 / M))
            top = np.sort(counts)
            if top[-1] > top[-2]:
                return counts


def _pair(value, where: str) -> tuple[int, int]:
    if len(value) != 2:
        raise ConfigError(f"{where} must be [lo, hi], got {list(value)}")
    return int(value[0]), int(value[1])
