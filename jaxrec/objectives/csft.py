"""CSFT: causal language-model loss on target tokens only.

Batch: ``input_ids`` and ``attention_mask`` [batch, length] (history titles
joined with ", ", then the next title, newline and EOS), ``target_mask``
[batch, length] = 1 on the tokens to predict. The logit at position t-1
predicts the token at t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.shapes import bucket_length


def next_token_loss(logits: jax.Array, input_ids: jax.Array, target_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean negative log-likelihood over target tokens, and their count."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), input_ids[:, 1:])
    weights = target_mask[:, 1:].astype(jnp.float32)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count


def target_positions(target_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each row's target tokens are ([batch, budget], right-padded with
    valid = 0), the budget the longest row's count rounded up to a bucket so
    that batches share a few shapes. A target at position 0 has no logit
    before it and is not counted, as in :func:`next_token_loss`."""
    wanted = np.asarray(target_mask).astype(bool).copy()
    wanted[:, 0] = False
    counts = wanted.sum(axis=1)
    budget = min(bucket_length(max(int(counts.max()), 1)), wanted.shape[1])
    positions = np.argsort(~wanted, axis=1, kind="stable")[:, :budget]  # targets first, in order
    valid = np.take_along_axis(wanted, positions, axis=1)
    return np.where(valid, positions, 0).astype(np.int32), valid.astype(np.int32)
