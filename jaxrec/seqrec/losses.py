"""Next-item losses over every real position of a right-padded history.

- full softmax: cross-entropy of each position's state against the whole
  item table (row 0, padding, is never a target and is masked out);
- sampled BCE: the positive item against sampled negatives (SASRec's and
  LLMEmb's loss with one negative per position).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def full_softmax_loss(states: jax.Array, item_table: jax.Array, targets: jax.Array,
                      held_out: jax.Array | None = None) -> jax.Array:
    """states [B, L, H], item_table [N + 1, H], targets [B, L] (0 = no target);
    ``held_out`` [N] (optional): real items that are no candidate (held-out cold items)."""
    # logits over the real items only (row 0, padding, is never a candidate); the
    # target's logit as a row-wise dot, so no gather or scatter touches the logits
    logits = jnp.einsum("blh,nh->bln", states, item_table[1:]).astype(jnp.float32)
    if held_out is not None:
        logits = jnp.where(held_out, -jnp.inf, logits)
    target_logit = jnp.einsum("blh,blh->bl", states, item_table[targets]).astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    weights = (targets > 0).astype(jnp.float32)
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def sampled_bce_loss(states: jax.Array, item_table: jax.Array, targets: jax.Array, negatives: jax.Array) -> jax.Array:
    """negatives [B, L, K]: BCE of the positive (label 1) and each negative (label 0)."""
    positive = jnp.einsum("blh,blh->bl", states, item_table[targets])
    negative = jnp.einsum("blh,blkh->blk", states, item_table[negatives])
    terms = optax.sigmoid_binary_cross_entropy(positive, jnp.ones_like(positive)) + jnp.sum(
        optax.sigmoid_binary_cross_entropy(negative, jnp.zeros_like(negative)), axis=-1
    )
    weights = (targets > 0).astype(jnp.float32)
    return jnp.sum(terms * weights) / jnp.maximum(jnp.sum(weights), 1.0)
