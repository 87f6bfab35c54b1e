"""Item-level contrastive learning (SimCSE style): InfoNCE over cosine
similarity / temperature, row i of ``a`` against every row of ``b``, with
the other rows of the global batch as negatives.

Batch: two views of each item (two dropout passes, or two token maskings),
pooled into ``a`` and ``b`` [batch, dim].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def info_nce(a: jax.Array, b: jax.Array, temperature: float, symmetric: bool = False) -> jax.Array:
    logits = l2_normalize(a) @ l2_normalize(b).T / temperature
    labels = jnp.arange(a.shape[0])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    if symmetric:
        loss = 0.5 * (loss + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
    return loss
