"""Ranking metrics for next-item prediction: Recall@K (= HR@K with one
target) and NDCG@K, by full ranking or against sampled negatives.

A target's rank counts every other candidate scored at least as high, so ties
never favour the target. Scores are computed batched over users inside jit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

KS = (5, 10, 20)


def rank_of_target(scores: jax.Array, target_index: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """0-based pessimistic rank of ``scores[u, target_index[u]]`` among the
    candidates where ``valid`` is true (all by default)."""
    target = jnp.take_along_axis(scores, target_index[:, None], axis=1)
    at_least = scores >= target
    if valid is not None:
        at_least &= valid
    return jnp.sum(at_least, axis=1) - 1  # the target itself is not ahead of itself


def metrics_from_ranks(ranks: jax.Array, ks=KS) -> dict[str, jax.Array]:
    """Per-user Recall@K and NDCG@K arrays."""
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = hit.astype(jnp.float32)
        out[f"ndcg@{k}"] = jnp.where(hit, 1.0 / jnp.log2(ranks.astype(jnp.float32) + 2.0), 0.0)
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
