"""Hops: pointer chasing, where the answer has to pass through intermediate positions.

A sequence holds ``chains`` chains of assignments among filler, each written as two adjacent tokens
``destination source``: a chain of ``h`` hops is ``x1 value``, then later ``x2 x1``, ..., ``xh
x(h-1)``, its links in order and interleaved with the other chains' at random positions. The last
``chains`` positions are questions, one per chain in random order: at the question ``xh`` the model
must name the chain's value. One hop is associative recall (MQAR's two steps: the value learns its
variable, the question finds it); each further hop needs the link ``x(i+1) xi`` to have fetched
``xi``'s value first, one layer later. So a question of ``h`` hops needs about ``h + 1`` layers, and
a pattern that cannot connect a link to the link before it in that many layers leaves it guessing:
depth and reach decide the score, not only distance.

Answers are bucketed by hop count (the difficulty axis); hop counts are drawn evenly, so every
bucket gets as many answers. Variables are distinct within a sequence.

Token ids: 0 filler, ``1 .. variables`` variables, ``variables + 1 .. variables + values`` values.

>>> task = Hops(HopsConfig(n=64, chains=2, hops=[1, 2]))
>>> batch = task.batch(np.random.default_rng(0), 3)
>>> batch.tokens.shape, task.bucket_names, task.chance
((3, 64), ('1 hop', '2 hops'), 0.0625)
>>> (batch.labels != IGNORE).sum(axis=1).tolist()   # one answer per chain
[2, 2, 2]
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from search.config import HopsConfig
from search.errors import ConfigError
from search.tasks.base import IGNORE, Batch, Task

__all__ = ["Hops"]

FILLER = 0


class Hops(Task):
    def __init__(self, cfg: HopsConfig):
        hops = tuple(int(h) for h in cfg.hops)
        if not hops or hops[0] < 1 or any(b <= a for a, b in pairwise(hops)):
            raise ConfigError(f"task.hops must be increasing hop counts of 1 or more, got {list(cfg.hops)}")
        if cfg.chains < 1 or cfg.values < 2:
            raise ConfigError(f"task.chains >= 1 and task.values >= 2 are needed, got {cfg.chains}, "
                             f"{cfg.values}")
        if cfg.chains * hops[-1] > cfg.variables:
            raise ConfigError(f"task.variables = {cfg.variables} is too few for task.chains = {cfg.chains} "
                             f"chains of up to {hops[-1]} distinct variables each; raise it to "
                             f"{cfg.chains * hops[-1]}")
        links = cfg.chains * hops[-1]  # the most links a sequence can hold
        if 2 * links > (cfg.n - cfg.chains) // 2:
            raise ConfigError(f"task.chains * max(task.hops) = {links} links take {2 * links} positions; "
                             f"keep them under half of the {cfg.n - cfg.chains} before the questions (raise "
                             f"task.n or lower task.chains)")
        self.cfg = cfg
        self.name = "hops"
        self.n = cfg.n
        self.hops = hops
        self.vocab = 1 + cfg.variables + cfg.values
        self.bucket_names = tuple(f"{h} hop" if h == 1 else f"{h} hops" for h in hops)
        self.chance = 1.0 / cfg.values

    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        cfg, n, C = self.cfg, self.n, self.cfg.chains
        body = n - C  # positions before the questions
        tokens = np.full((size, n), FILLER, np.int64)
        labels = np.full((size, n), IGNORE, np.int64)
        buckets = np.full((size, n), -1, np.int64)
        for b in range(size):
            bucket = rng.integers(len(self.hops), size=C)  # each chain's difficulty
            length = np.asarray(self.hops)[bucket]  # (C,) links per chain
            names = rng.choice(cfg.variables, int(length.sum()), replace=False) + 1
            values = rng.integers(cfg.values, size=C) + 1 + cfg.variables
            chain = rng.permutation(np.repeat(np.arange(C), length))  # which chain each link belongs to
            starts = _pair_starts(rng, body, len(chain))  # increasing, non-overlapping pairs
            variable = np.split(names, np.cumsum(length)[:-1])  # chain c's x1 .. xh
            seen = np.zeros(C, np.int64)
            for c, at in zip(chain, starts, strict=True):
                i = seen[c]  # this link binds x(i+1): to the value, or to x(i)
                source = values[c] if i == 0 else variable[c][i - 1]
                tokens[b, at:at + 2] = variable[c][i], source
                seen[c] += 1
            order = rng.permutation(C)  # which chain each question asks about
            tokens[b, body:] = [variable[c][-1] for c in order]
            labels[b, body:] = values[order]
            buckets[b, body:] = bucket[order]
        return Batch(tokens, labels, buckets)


def _pair_starts(rng: np.random.Generator, positions: int, count: int) -> np.ndarray:
    """``count`` increasing starts of two-token pairs that do not overlap, uniform over all such
    placements in ``[0, positions)``: choose ``count`` of ``positions - count`` slots, then shift
    the i-th by i to make room for each pair's second token."""
    return np.sort(rng.choice(positions - count, count, replace=False)) + np.arange(count)
