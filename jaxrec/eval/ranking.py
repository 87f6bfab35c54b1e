"""Ranking metrics for next-item prediction: Recall@K (= HR@K with one
target) and NDCG@K, by full ranking or against sampled negatives.

A target's place is given as two counts, the candidates scored higher and
those scored equal (the target itself not counted), and each metric is its
expectation when ties are broken at random: a target tied with t others is at
each of the t + 1 places from its count of higher ones with probability
1 / (t + 1). Items with identical titles get identical LLM vectors, so ties
are real; counting them all ahead of the target would understate such models,
counting them behind would overstate them. Scores are computed batched over
users inside jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

KS = (5, 10, 20)


def rank_of_target(scores: jax.Array, target_index: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """[U, 2]: how many candidates (where ``valid``, all by default) score
    higher than ``scores[u, target_index[u]]``, and how many others score the same."""
    target = jnp.take_along_axis(scores, target_index[:, None], axis=1)
    higher, equal = scores > target, scores == target
    if valid is not None:
        higher, equal = higher & valid, equal & valid
    # the target itself is one of the equal scores
    return jnp.stack([jnp.sum(higher, axis=1), jnp.sum(equal, axis=1) - 1], axis=1)


def metrics_from_ranks(ranks: jax.Array, ks=KS) -> dict[str, jax.Array]:
    """Per-user Recall@K and NDCG@K arrays, expected under random tie-breaking,
    from ``rank_of_target``'s [U, 2] counts (or [U] exact 0-based ranks)."""
    ranks = jnp.asarray(ranks)
    higher, tied = (ranks[:, 0], ranks[:, 1]) if ranks.ndim == 2 else (ranks, jnp.zeros_like(ranks))
    places = (tied + 1).astype(jnp.float32)
    out = {}
    for k in ks:
        # gain[n]: the summed NDCG of places 0 .. n-1
        gain = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.log2(jnp.arange(k) + 2.0))])
        first, end = jnp.minimum(higher, k), jnp.minimum(higher + tied + 1, k)  # places within the top k
        out[f"recall@{k}"] = (end - first).astype(jnp.float32) / places
        out[f"ndcg@{k}"] = (gain[end] - gain[first]) / places
    return out


@functools.partial(jax.jit, static_argnames=("exclude_history",))
def full_ranking_ranks(user_vectors, item_vectors, targets, history, exclude_history: bool = False):
    """Ranks of ``targets`` [U] among all real items (row 0 of ``item_vectors``
    is padding and never a candidate). ``history`` [U, L] (0-padded) items are
    removed from the candidates when ``exclude_history``; the target stays."""
    scores = user_vectors @ item_vectors.T
    num = scores.shape[1]
    valid = jnp.ones_like(scores, dtype=bool).at[:, 0].set(False)
    if exclude_history:
        seen = jnp.zeros_like(valid).at[jnp.arange(len(history))[:, None], history].set(True)
        seen = seen.at[:, 0].set(False) & (jnp.arange(num)[None, :] != targets[:, None])
        valid &= ~seen
    return rank_of_target(scores, targets, valid)


@jax.jit
def sampled_ranks(user_vectors, item_vectors, targets, negatives):
    """Ranks of ``targets`` [U] among themselves plus ``negatives`` [U, N]."""
    candidates = jnp.concatenate([targets[:, None], negatives], axis=1)
    scores = jnp.einsum("ud,und->un", user_vectors, item_vectors[candidates])
    return rank_of_target(scores, jnp.zeros(len(targets), jnp.int32))


def summarize(per_user: dict[str, jax.Array]) -> dict[str, float]:
    return {name: float(jnp.mean(values)) for name, values in per_user.items()}
