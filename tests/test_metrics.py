"""Ranking metrics against hand-computed rankings."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.eval.ranking import (
    full_ranking_ranks,
    metrics_from_ranks,
    rank_of_target,
    sampled_ranks,
    summarize,
)


def test_ties_are_counted_at_their_expected_place():
    scores = jnp.asarray([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    ranks = rank_of_target(scores, jnp.asarray([0, 3]))
    assert ranks.tolist() == [[1, 1], [0, 3]]  # (higher, tied): one higher + one tie; three ties


def test_a_target_tied_with_three_others_scores_its_expected_rank():
    # 5 candidates higher, the target tied with 3 others: places 5, 6, 7, 8 (0-based), a quarter each
    scores = jnp.asarray([[9.0, 8.0, 7.0, 6.0, 5.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.1]])
    ranks = rank_of_target(scores, jnp.asarray([7]))
    assert ranks.tolist() == [[5, 3]]
    m = {name: float(v[0]) for name, v in metrics_from_ranks(ranks, ks=(5, 7, 10)).items()}
    assert m["recall@5"] == 0.0 and m["recall@7"] == pytest.approx(0.5) and m["recall@10"] == pytest.approx(1.0)
    assert m["ndcg@7"] == pytest.approx((1 / np.log2(7) + 1 / np.log2(8)) / 4)
    assert m["ndcg@10"] == pytest.approx(sum(1 / np.log2(r + 2) for r in (5, 6, 7, 8)) / 4)
    # the same metrics as averaging the four tie-breaks' exact ranks
    exact = metrics_from_ranks(jnp.asarray([5, 6, 7, 8]), ks=(5, 7, 10))
    for name, values in exact.items():
        assert m[name] == pytest.approx(float(np.mean(values)))


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
    assert full_ranking_ranks(users, items, jnp.asarray([3]), history).tolist() == [[2, 0]]
    assert full_ranking_ranks(users, items, jnp.asarray([3]), history, exclude_history=True).tolist() == [[1, 0]]


def test_k_beyond_the_catalogue():
    ranks = full_ranking_ranks(jnp.ones((1, 1)), jnp.arange(4.0)[:, None], jnp.asarray([1]), jnp.zeros((1, 1), jnp.int32))
    m = summarize(metrics_from_ranks(ranks, ks=(20,)))
    assert ranks.tolist() == [[2, 0]] and m["recall@20"] == 1.0


def test_sampled_negatives_avoid_the_whole_sequence():
    from jaxrec.eval.negatives import UserItems

    sequences = [np.array([1, 2, 3, 9, 4]), np.array([5, 6]), np.array([7])]
    user_items = UserItems(np.cumsum([0, *map(len, sequences)]), np.concatenate(sequences), 10)
    negatives = user_items.sample(np.random.default_rng(0), np.arange(3), 5)
    for row, seen in zip(negatives, sequences):
        assert len(set(row)) == 5 and not set(row) & set(seen) and 0 not in row
    again = user_items.sample(np.random.default_rng(0), np.arange(3), 5)
    np.testing.assert_array_equal(negatives, again)
    exact = user_items.sample(np.random.default_rng(1), np.array([0]), 5)  # user 0 has exactly 5 left
    assert sorted(exact[0]) == [5, 6, 7, 8, 10]
    with pytest.raises(ValueError, match="user 0: only 5 items left"):
        user_items.sample(np.random.default_rng(0), np.arange(3), 6)
    # many draws at once: none is ever the row's user's item
    users = np.random.default_rng(2).integers(0, 3, 5000)
    draws = user_items.sample(np.random.default_rng(3), users, 3, distinct=False)
    assert not user_items.contains(users[:, None], draws).any() and draws.min() >= 1 and draws.max() <= 10
    np.testing.assert_array_equal(user_items.contains(np.array([0, 0, 1]), np.array([9, 5, 5])), [True, False, True])


def test_sampled_negatives_exclude_items_beyond_the_history_window():
    """Real data, a history window of 3: the negatives of every user avoid all
    of its items, also those older than the window the model reads."""
    from jaxrec.eval.negatives import UserItems
    from jaxrec.seqrec.histories import evaluation_examples
    from tests.test_seqrec import _toy_data

    data = _toy_data()
    history, targets, _ = evaluation_examples(data, "valid", 3)
    negatives = UserItems(data.offsets, data.items, data.num_items).sample(np.random.default_rng(0), np.arange(data.num_users), 3)
    for u in range(data.num_users):
        assert not set(negatives[u]) & set(data.sequence(u).tolist())
        assert targets[u] not in negatives[u]


def test_sampled_ranks_with_a_tie():
    items = jnp.asarray([[0.0], [1.0], [2.0], [1.0], [0.5]])
    ranks = sampled_ranks(jnp.asarray([[1.0]]), items, jnp.asarray([1]), jnp.asarray([[3, 4]]))
    assert ranks.tolist() == [[0, 1]]  # item 3 ties with the target: first or second, half each
    m = metrics_from_ranks(ranks, ks=(1,))
    assert float(m["recall@1"][0]) == pytest.approx(0.5)


def test_popularity_and_history_groups():
    from jaxrec.seqrec.evaluate import history_groups, popularity_groups
    from jaxrec.seqrec.spec import EvalSpec

    popularity = np.array([0, 50, 1, 7, 3, 0, 20, 2, 9, 4, 11])  # items 1..10
    groups = popularity_groups(popularity, EvalSpec(popular_share=0.2, popularity_bins=2))
    assert np.flatnonzero(groups["popular"]).tolist() == [1, 6]
    assert np.flatnonzero(groups["tail"]).tolist() == [2, 3, 4, 5, 7, 8, 9, 10]
    assert "cold" not in groups
    cold = popularity_groups(popularity, EvalSpec(popular_share=0.3, cold_share=0.3))["cold"]
    assert np.flatnonzero(cold).tolist() == [2, 5, 7]  # the three least popular
    absolute = popularity_groups(popularity, EvalSpec(tail_threshold=4, popularity_edges=[2, 9]))
    assert np.flatnonzero(absolute["tail"]).tolist() == [2, 4, 5, 7]  # fewer than 4: item 9 (4) is popular
    assert np.flatnonzero(absolute["popular"]).tolist() == [1, 3, 6, 8, 9, 10]
    assert {k: np.flatnonzero(v).tolist() for k, v in absolute.items() if "interactions" in k} == {
        "<2 interactions": [2, 5], "2-8 interactions": [3, 4, 7, 9], "≥9 interactions": [1, 6, 8, 10]}
    bins = [name for name in groups if name.startswith("bin")]
    assert bins == ["bin1 (0-4 interactions)", "bin2 (7-50 interactions)"]
    assert np.flatnonzero(groups[bins[0]]).tolist() == [2, 4, 5, 7, 9]  # the five least popular
    lengths = np.array([1, 5, 6, 10, 11, 400])
    by_length = history_groups(lengths, [5, 10])
    assert {k: np.flatnonzero(v).tolist() for k, v in by_length.items()} == {"<5": [0], "5-9": [1, 2], "≥10": [3, 4, 5]}


def test_evaluate_full_sampled_and_shuffle_diagnostics():
    from jaxrec.eval.negatives import UserItems
    from jaxrec.seqrec.evaluate import evaluate
    from jaxrec.seqrec.spec import EvalSpec

    items = np.eye(6, dtype=np.float32)[:, 1:]  # item i = unit vector e_{i-1}; row 0 zero
    items = np.concatenate([items, np.zeros((6, 1), np.float32)], axis=1)
    history = np.array([[1, 2, 0], [3, 4, 5], [2, 0, 0]], np.int32)
    targets = np.array([3, 1, 4], np.int32)

    def last_item_plus_one(rows):  # order-sensitive: points at (last real item + 1)
        last = rows[np.arange(len(rows)), np.maximum((rows > 0).sum(1) - 1, 0)]
        return items[np.minimum(last + 1, 5)] + 0.1 * items[1]

    spec = EvalSpec(ks=[1, 3], sampled_negatives=1, batch_size=2, popularity_bins=1)
    sequences = [np.r_[row[row > 0], t] for row, t in zip(history, targets)]
    user_items = UserItems(np.cumsum([0, *map(len, sequences)]), np.concatenate(sequences), 5)
    result = evaluate(last_item_plus_one, items, history, targets, np.array([2, 3, 1]), np.ones(6, int), user_items,
                      spec, seed=0)
    # ranks: user 0 points at 3 = its target (0); user 1 at 5, target 1 scores 0.1 (1);
    # user 2 at 3, target 4 scores 0 behind 3 and 1 and ties with 2 and 5 (places 2, 3, 4: a third in the top 3)
    assert result["full"]["recall@1"] == pytest.approx(1 / 3)
    assert result["full"]["recall@3"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    # one negative, never the user's: user 0 draws 4 or 5 (0 against its target's 1.0), user 1 can
    # only draw 2 (0 against 0.1), user 2 draws 1, 3 or 5 (0.1, 1.0, or a tie at 0: first or second)
    assert result["sampled"]["recall@1"] == pytest.approx(2 / 3)
    groups = result["by_history_length"]
    assert groups["<5"]["users"] == 3 and groups["<5"]["sampled"] == pytest.approx(result["sampled"])
    popular = result["by_popularity"]["popular"]  # item 1 (all tie at one interaction): user 1's target
    assert popular["users"] == 1 and popular["full"]["recall@1"] == 0.0 and popular["sampled"]["recall@1"] == 1.0
    assert result["shuffled"]["cosine_to_original"] < 1.0 and set(result["shuffled"]) >= {"full", "sampled"}
    with_cold = evaluate(last_item_plus_one, items, history, targets, np.array([2, 3, 1]), np.ones(6, int),
                         user_items, spec, seed=0, held_out=np.array([3]))
    cold = with_cold["by_popularity"]["held-out cold items"]  # item 3: user 0's target, ranked first
    assert cold["users"] == 1 and cold["full"]["recall@1"] == 1.0
    order_free = lambda rows: items[rows].sum(axis=1)
    result = evaluate(order_free, items, history, targets, np.array([2, 3, 1]), np.ones(6, int), user_items,
                      spec, seed=0)
    assert result["shuffled"]["cosine_to_original"] == pytest.approx(1.0)
    assert result["shuffled"]["full"] == pytest.approx(result["full"])
    assert result["shuffled"]["sampled"] == pytest.approx(result["sampled"])
