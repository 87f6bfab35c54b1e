"""CSFT: causal language-model loss on target tokens only.

Batch: ``input_ids`` and ``attention_mask`` [batch, length] (history titles
joined with ", ", then the next title, newline and EOS), ``target_mask``
[batch, length] = 1 on the tokens to predict. The logit at position t-1
predicts the token at t.
"""

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
