"""Next-item losses over every real position of a right-padded history.

- full softmax: cross-entropy of each position's state against the whole
  item table (row 0, padding, is never a target and is masked out);
- sampled BCE: the positive item against sampled negatives (SASRec's and
  LLMEmb's loss with one negative per position).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.models.layers import flat_matmul


def full_softmax_loss(states: jax.Array, item_table: jax.Array, targets: jax.Array,
                      candidates: np.ndarray | None = None) -> jax.Array:
    """states [B, L, H], item_table [N + 1, H], targets [B, L] (0 = no target);
    ``candidates`` (optional): the item ids the softmax offers, when not every real
    item is one (held-out cold items are left out); every target must be one."""
    # logits over the candidates only (row 0, padding, is never one): leaving rows out
    # equals masking their logits to -inf, without a select over the [B, L, N] logits
    # and its transpose in the backward; one 2-D product (flat_matmul), whose gradient
    # XLA:CPU runs in about two thirds of the time of the [B, L, H] einsum's; the
    # target's logit as a row-wise dot, so no gather or scatter touches the logits
    offered = item_table[1:] if candidates is None else item_table[jnp.asarray(candidates)]
    logits = flat_matmul(states, offered.T, 1).astype(jnp.float32)
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
