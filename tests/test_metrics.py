"""Ranking metrics against hand-computed rankings."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.eval.metrics import (
    full_ranking_ranks,
    metrics_from_ranks,
    rank_of_target,
    sample_negatives,
    sampled_ranks,
    summarize,
)


def test_ties_count_against_the_target():
    scores = jnp.asarray([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    ranks = rank_of_target(scores, jnp.asarray([0, 3]))
    assert ranks.tolist() == [2, 3]  # one higher + one tie; three ties


def test_recall_and_ndcg_values():
    ranks = jnp.asarray([0, 4, 9, 30])
    m = metrics_from_ranks(ranks, ks=(5, 10))
    assert m["recall@5"].tolist() == [1, 1, 0, 0] and m["recall@10"].tolist() == [1, 1, 1, 0]
    np.testing.assert_allclose(m["ndcg@5"], [1.0, 1 / np.log2(6), 0, 0], rtol=1e-6)
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 1 / np.log2(6), 1 / np.log2(11), 0], rtol=1e-6)


def test_full_ranking_skips_padding_and_optionally_history():
    users = jnp.asarray([[1.0, 0.0]])
    items = jnp.asarray([[9.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.5, 0.0]])  # row 0 is padding
    history = jnp.asarray([[1, 0]])
    assert full_ranking_ranks(users, items, jnp.asarray([3]), history).tolist() == [2]
    assert full_ranking_ranks(users, items, jnp.asarray([3]), history, exclude_history=True).tolist() == [1]


def test_k_beyond_the_catalogue():
    ranks = full_ranking_ranks(jnp.ones((1, 1)), jnp.arange(4.0)[:, None], jnp.asarray([1]), jnp.zeros((1, 1), jnp.int32))
    m = summarize(metrics_from_ranks(ranks, ks=(20,)))
    assert ranks.tolist() == [2] and m["recall@20"] == 1.0


def test_sampled_negatives_avoid_history_and_target():
    rng = np.random.default_rng(0)
    histories = [np.array([1, 2, 3]), np.array([5])]
    negatives = sample_negatives(rng, 10, histories, np.array([4, 6]), 5)
    for row, seen, target in zip(negatives, histories, [4, 6]):
        assert len(set(row)) == 5 and target not in row
        assert not set(row) & set(seen) and 0 not in row
    again = sample_negatives(np.random.default_rng(0), 10, histories, np.array([4, 6]), 5)
    np.testing.assert_array_equal(negatives, again)
    assert sample_negatives(rng, 10, histories, np.array([4, 6]), 6).shape == (2, 6)  # user 0 has exactly 6 left
    with pytest.raises(ValueError, match="only 6 items left"):
        sample_negatives(rng, 10, histories, np.array([4, 6]), 7)


def test_sampled_ranks_with_a_tie():
    items = jnp.asarray([[0.0], [1.0], [2.0], [1.0], [0.5]])
    ranks = sampled_ranks(jnp.asarray([[1.0]]), items, jnp.asarray([1]), jnp.asarray([[3, 4]]))
    assert ranks.tolist() == [1]  # item 3 ties with the target and is counted ahead
