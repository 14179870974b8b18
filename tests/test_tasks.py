"""Proxy-task generators: the invariants every batch must keep, whatever the seed and config."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search import HopsConfig, MajorityConfig, MQARConfig, make_task
from search.errors import ConfigError
from search.tasks import IGNORE, bucket_of


def mqar_pairs(tokens, labels, cfg):
    """(key position, query position) of every answer, recovered from the tokens alone."""
    found = []
    for q in np.flatnonzero(labels != IGNORE):
        key = tokens[q]
        earlier = np.flatnonzero(tokens[:q] == key)
        assert len(earlier) == 1, "each key occurs once before its query"
        found.append((int(earlier[0]), int(q)))
    return found


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([32, 64, 100, 128]), pairs=st.integers(1, 5))
def test_mqar_every_query_has_its_pair_earlier(seed, n, pairs):
    cfg = MQARConfig(n=n, pairs=pairs, keys=8, values=6, distances=[2, 5, 17, n])
    task = make_task(cfg)
    batch = task.batch(np.random.default_rng(seed), 6)
    assert batch.tokens.shape == batch.labels.shape == batch.buckets.shape == (6, n)
    assert batch.tokens.min() >= 0 and batch.tokens.max() < task.vocab
    for tokens, labels, buckets in zip(batch.tokens, batch.labels, batch.buckets, strict=True):
        answers = labels != IGNORE
        assert answers.sum() == pairs  # labels only at the queries, one per pair
        assert ((buckets >= 0) == answers).all()
        keys = tokens[answers]
        assert len(set(keys.tolist())) == pairs and ((keys >= 1) & (keys <= cfg.keys)).all()
        for key_at, query_at in mqar_pairs(tokens, labels, cfg):
            assert labels[query_at] == tokens[key_at + 1]  # the answer is the value after the key
            assert cfg.keys < tokens[key_at + 1] <= cfg.keys + cfg.values
            distance = query_at - key_at
            edges = cfg.distances
            assert edges[buckets[query_at]] <= distance < edges[buckets[query_at] + 1]


def test_mqar_buckets_are_balanced_and_pairs_are_spread():
    cfg = MQARConfig()
    task = make_task(cfg)
    batch = task.batch(np.random.default_rng(0), 400)
    counts = np.bincount(batch.buckets[batch.buckets >= 0], minlength=len(task.bucket_names))
    assert counts.min() > 0.85 * counts.mean()  # the bucket is drawn first: equal shares
    key_positions = [k for tokens, labels in zip(batch.tokens, batch.labels, strict=True)
                     for k, _ in mqar_pairs(tokens, labels, cfg)]
    # pairs sit anywhere, not only at the start (a prefix or sinks must not solve the task)
    assert np.mean(np.array(key_positions) > cfg.n // 3) > 0.2
    assert task.bucket_names == ("2-15", "16-47", "48-127")
    assert task.chance == 1 / cfg.values


def test_same_seed_same_batch_other_seed_other_batch():
    for cfg in (MQARConfig(n=64, distances=[2, 16, 64]), MajorityConfig(n=64, count=[4, 6])):
        task = make_task(cfg)
        a, b = (task.batch(np.random.default_rng(7), 4) for _ in range(2))
        c = task.batch(np.random.default_rng(8), 4)
        assert (a.tokens == b.tokens).all() and (a.labels == b.labels).all()
        assert not (a.tokens == c.tokens).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(1, 4), markers=st.integers(2, 5))
def test_majority_label_is_the_strict_winner(seed, groups, markers):
    cfg = MajorityConfig(n=128, groups=groups, markers=markers, count=[3, 9], noise=5)
    task = make_task(cfg)
    batch = task.batch(np.random.default_rng(seed), 5)
    first_marker, first_question = task.first_marker, task.first_question
    for tokens, labels, buckets in zip(batch.tokens, batch.labels, batch.buckets, strict=True):
        answers = np.flatnonzero(labels != IGNORE)
        assert answers.tolist() == list(range(cfg.n - groups, cfg.n))  # questions are the last positions
        assert ((buckets >= 0) == (labels != IGNORE)).all()
        body = tokens[: cfg.n - groups]
        assert (body < first_question).all()  # no question inside the body
        asked = sorted(tokens[answers] - first_question)
        assert asked == list(range(groups))  # each group asked once
        for at in answers:
            group = tokens[at] - first_question
            ids = first_marker + group * markers + np.arange(markers)
            counts = np.array([(body == i).sum() for i in ids])
            assert cfg.count[0] <= counts.sum() <= cfg.count[1]
            top = np.sort(counts)
            assert top[-1] > top[-2]  # a strict winner
            assert labels[at] == ids[counts.argmax()]
            margin = top[-1] - top[-2]
            assert task.bucket_names[buckets[at]] == (f"margin {margin}" if margin < 3 else "margin 3+")


def assignments(body: np.ndarray) -> list[tuple[int, int, int]]:
    """(position, variable, source) of every pair in the body, read from the tokens alone: pairs
    never hold filler and never overlap, so each run of non-filler tokens is whole pairs."""
    pairs, p = [], 0
    while p < len(body):
        if body[p]:
            pairs.append((p, int(body[p]), int(body[p + 1])))
            p += 2
        else:
            p += 1
    return pairs


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), chains=st.integers(1, 4), top=st.integers(1, 4))
def test_hops_every_question_resolves_to_its_label_in_its_hop_count(seed, chains, top):
    cfg = HopsConfig(n=128, chains=chains, hops=list(range(1, top + 1)), variables=16, values=5)
    task = make_task(cfg)
    batch = task.batch(np.random.default_rng(seed), 5)
    assert batch.tokens.max() < task.vocab and task.chance == 1 / 5
    values_from = 1 + cfg.variables
    for tokens, labels, buckets in zip(batch.tokens, batch.labels, batch.buckets, strict=True):
        answers = np.flatnonzero(labels != IGNORE)
        assert answers.tolist() == list(range(cfg.n - chains, cfg.n))  # questions are the last positions
        assert ((buckets >= 0) == (labels != IGNORE)).all()
        pairs = assignments(tokens[: cfg.n - chains])
        bound = {variable: (at, source) for at, variable, source in pairs}
        assert len(bound) == len(pairs) and all(1 <= v < values_from for v in bound)  # each assigned once
        assert len(set(tokens[answers].tolist())) == chains  # one question per chain
        for at in answers:  # follow the question back, as the model must
            name, hops, before = int(tokens[at]), 0, at
            while name < values_from:
                where, name = bound[name]
                assert where < before  # each link comes after the one it reads
                hops, before = hops + 1, where
            assert name == labels[at] and hops == cfg.hops[buckets[at]]


def test_hops_buckets_are_balanced_and_links_spread():
    task = make_task(HopsConfig())
    batch = task.batch(np.random.default_rng(0), 400)
    counts = np.bincount(batch.buckets[batch.buckets >= 0], minlength=len(task.bucket_names))
    assert counts.min() > 0.85 * counts.mean()
    assert task.bucket_names == ("1 hop", "2 hops", "3 hops")
    used = np.flatnonzero((batch.tokens[:, : task.n - 4] != 0).any(axis=0))
    assert used.min() < task.n // 8 and used.max() > task.n * 7 // 8  # links anywhere in the body


def test_bucket_of():
    assert bucket_of(np.array([2, 15, 16, 127]), (2, 16, 48, 128)).tolist() == [0, 0, 1, 2]


@pytest.mark.parametrize("cfg, message", [
    pytest.param(MQARConfig(pairs=30, keys=64), "task.pairs = 30 needs 90 positions", id="mqar_crowded"),
    pytest.param(MQARConfig(pairs=9, keys=8), "task.pairs must be in [1, task.keys = 8]", id="mqar_keys"),
    pytest.param(MQARConfig(distances=[1, 16, 128]), "starting at 2 or more", id="mqar_edge_1"),
    pytest.param(MQARConfig(distances=[2, 48, 16, 128]), "must be increasing", id="mqar_unsorted"),
    pytest.param(MQARConfig(distances=[2, 16, 512]), "the last edge 512 exceeds", id="mqar_past_n"),
    pytest.param(MQARConfig(values=1), "task.values must be at least 2", id="mqar_values"),
    pytest.param(MajorityConfig(count=[1, 4]), "2 <= lo <= hi", id="majority_count_low"),
    pytest.param(MajorityConfig(count=[6]), "must be [lo, hi]", id="majority_count_shape"),
    pytest.param(MajorityConfig(groups=8, count=[10, 20]), "must fit in half", id="majority_too_many"),
    pytest.param(MajorityConfig(margins=[2, 3]), "starting at 1", id="majority_margins"),
    pytest.param(MajorityConfig(markers=1), "task.markers >= 2", id="majority_markers"),
    pytest.param(MQARConfig(n=4, distances=[2, 4], pairs=1), "task.n must be at least 8", id="tiny_n"),
    pytest.param(HopsConfig(hops=[2, 1]), "task.hops must be increasing hop counts", id="hops_order"),
    pytest.param(HopsConfig(hops=[0, 1]), "task.hops must be increasing hop counts of 1", id="hops_zero"),
    pytest.param(HopsConfig(chains=8, hops=[1, 8], variables=48), "task.variables = 48 is too few",
                 id="hops_variables"),
    pytest.param(HopsConfig(n=64, chains=4, hops=[1, 4], variables=48), "links take 32 positions",
                 id="hops_crowded"),
    pytest.param(HopsConfig(values=1), "task.values >= 2", id="hops_values"),
])
def test_bad_task_config_names_the_key(cfg, message):
    with pytest.raises(ConfigError) as error:
        make_task(cfg)
    assert message in str(error.value)


def test_unknown_task_name():
    with pytest.raises(ConfigError, match="unknown task 'mqr'; choose from mqar, majority, hops"):
        make_task(MQARConfig(name="mqr"))
