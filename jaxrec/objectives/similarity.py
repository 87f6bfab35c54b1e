"""Similarity losses between two sets of vectors.

``soft_clip_loss`` is LLMEmb's SCFT loss, a symmetric CLIP-style loss with
soft targets: with X, Y the two views' embeddings [batch, dim],
logits = X Y^T / tau, targets = softmax((X X^T + Y Y^T) / 2 * tau), and the
loss averages the cross-entropy of logits against targets row-wise and of
logits^T against targets^T. The authors' code applies it to the raw
embeddings; ``normalize`` L2-normalises them first. The same form (fixed tau)
aligns RAT's adapter outputs to ID item vectors in the recommender.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

TAU_INIT = 3.0
"""SCFT's learnable temperature starts here (the authors' value)."""


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def soft_clip_loss(x: jax.Array, y: jax.Array, tau: jax.Array, normalize: bool = False,
                   valid: jax.Array | None = None) -> jax.Array:
    """``valid`` [batch]: rows that take part (the others are neither anchors
    nor candidates), for batches of a static size that are not all real."""
    if normalize:
        x, y = l2_normalize(x), l2_normalize(y)
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    valid = jnp.ones(len(x), bool) if valid is None else valid
    pairs = valid[:, None] & valid[None, :]
    excluded = jnp.finfo(jnp.float32).min / 4  # a candidate with zero weight and zero target
    logits = jnp.where(pairs, x @ y.T / tau, excluded)
    # zero rows for invalid anchors too, so that no column of targets^T puts weight on them
    targets = jnp.where(pairs, jax.nn.softmax(jnp.where(pairs, (x @ x.T + y @ y.T) / 2 * tau, excluded), axis=-1), 0.0)
    forward = optax.softmax_cross_entropy(logits, targets)
    backward = optax.softmax_cross_entropy(logits.T, targets.T)
    weights = valid.astype(jnp.float32)
    return jnp.sum((forward + backward) / 2 * weights) / jnp.maximum(jnp.sum(weights), 1.0)
