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

from jaxrec.data.text_examples import pad_batch
from jaxrec.shapes import bucket_length, pack_sequences, pad_sequences


def next_token_loss(logits: jax.Array, input_ids: jax.Array, target_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean negative log-likelihood over target tokens, and their count."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), input_ids[:, 1:])
    weights = target_mask[:, 1:].astype(jnp.float32)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count


def target_positions(target_mask: np.ndarray, attention_mask: np.ndarray,
                     groups: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the target tokens are, per group of rows (``groups`` equal blocks
    of consecutive rows, one per device the batch is split over): ``rows``
    (within the group), ``columns`` and ``valid``, each [groups, budget],
    targets first in order and the rest valid = 0. The budget is the fullest
    group's count rounded up to a length bucket, so that batches share a few
    shapes and the vocabulary projection runs on about as many positions as
    the batch has targets. A target that starts its sequence (padded or
    packed) has no logit before it and is not counted, as in
    :func:`next_token_loss`."""
    segments = np.asarray(attention_mask)
    starts = segments > 0
    starts[:, 1:] &= segments[:, 1:] != segments[:, :-1]
    wanted = np.asarray(target_mask).astype(bool) & ~starts
    width = wanted.shape[1]
    flat = wanted.reshape(groups, -1)
    budget = min(bucket_length(max(int(flat.sum(axis=1).max()), 1)), flat.shape[1])
    order = np.argsort(~flat, axis=1, kind="stable")[:, :budget]
    valid = np.take_along_axis(flat, order, axis=1)
    order = np.where(valid, order, 0)
    return (order // width).astype(np.int32), (order % width).astype(np.int32), valid.astype(np.int32)


def flat_positions(rows: jax.Array, columns: jax.Array, length: int) -> jax.Array:
    """:func:`target_positions` as positions through each group's rows (see
    ``Decoder``'s ``select``), for rows of ``length`` tokens."""
    return rows * length + columns


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, max_length: int, pack: bool = False,
            blocks: int = 1) -> dict[str, np.ndarray]:
    """A CSFT batch from (ids, target mask) examples: left-padded rows (one
    length bucket per batch), or rows of ``max_length`` packed with several
    examples each (``blocks``: the devices the batch is split over, each
    packed on its own), with the target positions per device's rows."""
    ids, targets = zip(*examples)
    if pack:  # the target flags packed into the same places as the ids
        batch = pack_sequences(list(ids), max_length, pad_id, max_length, blocks, aligned={"target_mask": targets})
    else:
        batch = pad_batch(list(ids), pad_id, max_length, side="left")
        batch["target_mask"], _ = pad_sequences(targets, batch["input_ids"].shape[1], 0, side="left")
    rows, columns, valid = target_positions(batch["target_mask"], batch["attention_mask"], blocks)
    return {**batch, "target_rows": rows, "target_columns": columns, "target_valid": valid}

