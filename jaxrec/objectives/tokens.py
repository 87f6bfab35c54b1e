"""Next-token cross-entropies: over a target mask, or at selected positions
only (where the vocabulary projection ran just there). The logit at position
t-1 predicts the token at t."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def next_token_loss(logits: jax.Array, input_ids: jax.Array, target_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean negative log-likelihood over target tokens, and their count."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), input_ids[:, 1:])
    weights = target_mask[:, 1:].astype(jnp.float32)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count


def selected_loss(logits: jax.Array, labels: jax.Array, positions: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss from logits [groups, budget, vocab] computed only at ``positions -
    1`` (positions counted through each of ``groups`` equal blocks of rows:
    row * length + column) for the ``labels`` [rows, length]; ``valid`` marks
    the slots that hold a real position."""
    targets = jnp.take_along_axis(labels.reshape(positions.shape[0], -1), positions, axis=-1)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    weights = valid.astype(jnp.float32)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count
