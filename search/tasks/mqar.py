"""Multi-query associative recall (MQAR, from the Zoology work), with controlled distances.

A sequence is filler (token 0) with ``pairs`` key-value pairs written as two adjacent tokens
``key value`` at random positions, and, later, each key once more as a query. At a query the model
must predict the key's value. Solving it takes two hops inside attention: the value token learns
which key precedes it, then the query finds the value token whose key matches its own. So the
pattern must connect each query to its pair, directly or through intermediate positions.

Distances (query position - key position) are drawn evenly over buckets, the bucket first and then
a distance inside it, so every bucket gets as many answers and accuracy per bucket shows how far a
pattern can route. Pairs sit anywhere, not at the start, so sinks or a prefix cannot solve it.

Token ids: 0 filler, ``1 .. keys`` keys, ``keys + 1 .. keys + values`` values.

>>> task = MQAR(MQARConfig(n=16, pairs=2, keys=4, values=4, distances=[2, 8, 16]))
>>> task.bucket_names, task.vocab, task.chance
(('2-7', '8-15'), 9, 0.25)
>>> batch = task.batch(np.random.default_rng(0), 1)
>>> batch.tokens[0]  # key 3, value 6, then key 3 asked; key 4, value 6, asked at 12
array([3, 6, 3, 0, 0, 0, 4, 6, 0, 0, 0, 0, 4, 0, 0, 0])
>>> np.flatnonzero(batch.labels[0] != IGNORE), batch.labels[0, [2, 12]], batch.buckets[0, [2, 12]]
(array([ 2, 12]), array([6, 6]), array([0, 0]))
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from search.config import MQARConfig
from search.errors import ConfigError
from search.tasks.base import IGNORE, Batch, Task, bucket_names

__all__ = ["MQAR"]

FILLER = 0
_TRIES = 200  # placements tried per pair before giving up (only over-full configs get there)


class MQAR(Task):
    def __init__(self, cfg: MQARConfig):
        edges = tuple(int(e) for e in cfg.distances)
        if len(edges) < 2 or any(b <= a for a, b in pairwise(edges)) or edges[0] < 2:
            raise ConfigError(f"task.distances must be increasing bucket edges starting at 2 or more "
                             f"(a query comes after its key and value), got {list(cfg.distances)}")
        if edges[-1] > cfg.n:
            raise ConfigError(f"task.distances: the last edge {edges[-1]} exceeds the sequence length "
                             f"task.n = {cfg.n}; a distance is at most n - 1")
        if not 1 <= cfg.pairs <= cfg.keys:
            raise ConfigError(f"task.pairs must be in [1, task.keys = {cfg.keys}] (keys of a sequence are "
                             f"distinct), got {cfg.pairs}")
        if 3 * cfg.pairs > cfg.n // 2:
            raise ConfigError(f"task.pairs = {cfg.pairs} needs {3 * cfg.pairs} positions; keep them under "
                             f"half of task.n = {cfg.n} so that pairs can be placed at any distance")
        if cfg.values < 2:
            raise ConfigError(f"task.values must be at least 2, got {cfg.values}")
        self.cfg = cfg
        self.name = "mqar"
        self.n = cfg.n
        self.vocab = 1 + cfg.keys + cfg.values
        self.edges = edges
        self.bucket_names = bucket_names(edges)
        self.chance = 1.0 / cfg.values

    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        cfg, n = self.cfg, self.n
        tokens = np.full((size, n), FILLER, np.int64)
        labels = np.full((size, n), IGNORE, np.int64)
        buckets = np.full((size, n), -1, np.int64)
        for b in range(size):
            keys = rng.choice(cfg.keys, cfg.pairs, replace=False) + 1
            values = rng.integers(cfg.values, size=cfg.pairs) + 1 + cfg.keys
            used = np.zeros(n, bool)
            for key, value in zip(keys, values, strict=True):
                bucket, key_at, query_at = self._place(rng, used)
                tokens[b, [key_at, key_at + 1, query_at]] = key, value, key
                labels[b, query_at] = value
                buckets[b, query_at] = bucket
        return Batch(tokens, labels, buckets)

    def _place(self, rng: np.random.Generator, used: np.ndarray) -> tuple[int, int, int]:
        """A free (key, value, query) triple at a distance drawn bucket first; marks it used."""
        edges, n = self.edges, self.n
        for _ in range(_TRIES):
            bucket = int(rng.integers(len(edges) - 1))
            distance = int(rng.integers(edges[bucket], edges[bucket + 1]))
            query_at = int(rng.integers(distance, n))
            key_at = query_at - distance
            if not (used[key_at] or used[key_at + 1] or used[query_at]):
                used[[key_at, key_at + 1, query_at]] = True
                return bucket, key_at, query_at
        raise ConfigError(f"could not place {self.cfg.pairs} pairs in n = {n} at distances {list(edges)}; "
                         f"lower task.pairs or raise task.n")
