"""MNTP: masked next-token prediction with bidirectional attention.

A rate of the real tokens is chosen (special tokens, padding and the first
real token of each row, or of each sequence of a packed row, never: nothing
precedes it to predict it from). Of the chosen,
80% become the mask token, 10% a random token and 10% stay unchanged. The
logit at position i-1 predicts the original token at i, which keeps the
pretrained LM head meaningful.

Batch: ``input_ids``, ``attention_mask`` [batch, length]. ``mask_tokens`` adds
``labels`` (original ids) and ``label_mask``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxrec.models.layers import positions_from_mask
from jaxrec.objectives.csft import next_token_loss


def mask_tokens(
    rng: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    rate: float,
    mask_token_id: int,
    vocab_size: int,
    special_ids: tuple[int, ...] = (),
) -> tuple[jax.Array, jax.Array]:
    """Returns (corrupted input ids, label mask)."""
    real = attention_mask.astype(bool)
    eligible = real & (positions_from_mask(attention_mask) > 0) & ~jnp.isin(input_ids, jnp.asarray(special_ids, input_ids.dtype))
    choose_key, kind_key, random_key = jax.random.split(rng, 3)
    chosen = eligible & jax.random.bernoulli(choose_key, rate, input_ids.shape)
    kind = jax.random.uniform(kind_key, input_ids.shape)
    random_tokens = jax.random.randint(random_key, input_ids.shape, 0, vocab_size, input_ids.dtype)
    corrupted = jnp.where(kind < 0.8, mask_token_id, jnp.where(kind < 0.9, random_tokens, input_ids))
    return jnp.where(chosen, corrupted, input_ids), chosen


def masked_next_token_loss(logits: jax.Array, labels: jax.Array, label_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss of predicting ``labels`` at masked positions from the logit one to the left."""
    return next_token_loss(logits, labels, label_mask)


def selection_budget(positions: int, rate: float) -> int:
    """Masked positions kept among ``positions`` (a group of rows): the
    expected count plus four standard deviations, so a group almost never
    exceeds it (any excess is left out of the loss)."""
    mean = rate * positions
    return int(min(positions, math.ceil(mean + 4 * math.sqrt(mean * (1 - rate))) + 1))


def masked_positions(label_mask: jax.Array, budget: int, groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """The first ``budget`` masked positions of each of ``groups`` equal blocks
    of rows [groups, budget], counted through the block's rows (row * length +
    column), and which of those slots hold a real masked position."""
    flat = label_mask.reshape(groups, -1)
    order = jnp.argsort(~flat, axis=-1, stable=True)[:, :budget]
    return order, jnp.take_along_axis(flat, order, axis=-1)


def selected_loss(logits: jax.Array, labels: jax.Array, positions: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss from logits [groups, budget, vocab] computed only at ``positions -
    1`` (see :func:`masked_positions`) for the ``labels`` [rows, length]."""
    targets = jnp.take_along_axis(labels.reshape(positions.shape[0], -1), positions, axis=-1)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    weights = valid.astype(jnp.float32)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count
