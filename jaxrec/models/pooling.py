"""Sequence pooling over real (non-padding) tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrec.models.layers import positions_from_mask

POOLINGS = ("mean", "last")


def mean_pool(states: jax.Array, mask: jax.Array, skip: jax.Array | None = None) -> jax.Array:
    """Mean of ``states`` [batch, length, dim] over positions where ``mask`` is 1,
    accumulated in float32. ``skip`` [batch] leaves out that many leading real
    tokens of each row (an instruction prefix)."""
    keep = mask.astype(bool)
    if skip is not None:
        keep &= positions_from_mask(mask) >= skip[:, None]
    weights = keep.astype(jnp.float32)[..., None]
    total = jnp.sum(states.astype(jnp.float32) * weights, axis=-2)
    return total / jnp.maximum(jnp.sum(weights, axis=-2), 1.0)


def segment_mean_pool(states: jax.Array, segments: jax.Array, count: int) -> jax.Array:
    """Mean of ``states`` [rows, length, dim] over each segment of packed rows
    (``segments``: 0 padding, 1..count segment ids): [rows, count, dim], zero
    for a segment a row does not hold."""
    one_hot = (segments[..., None] == jnp.arange(1, count + 1)).astype(jnp.float32)
    total = jnp.einsum("rlk,rld->rkd", one_hot, states.astype(jnp.float32))
    return total / jnp.maximum(jnp.sum(one_hot, axis=1), 1.0)[..., None]


def segment_last_pool(states: jax.Array, segments: jax.Array, count: int) -> jax.Array:
    """State of each segment's last token in packed rows: [rows, count, dim]."""
    following = jnp.pad(segments, ((0, 0), (0, 1)))[:, 1:]
    last = (segments > 0) & (segments != following)
    one_hot = ((segments[..., None] == jnp.arange(1, count + 1)) & last[..., None]).astype(jnp.float32)
    return jnp.einsum("rlk,rld->rkd", one_hot, states.astype(jnp.float32))


def segment_pool(states: jax.Array, segments: jax.Array, count: int, how: str) -> jax.Array:
    if how == "mean":
        return segment_mean_pool(states, segments, count)
    if how == "last":
        return segment_last_pool(states, segments, count)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")


def last_token_pool(states: jax.Array, mask: jax.Array) -> jax.Array:
    """State of each row's last real token; works for left and right padding."""
    length = mask.shape[-1]
    last = length - 1 - jnp.argmax(jnp.flip(mask.astype(jnp.int32), axis=-1), axis=-1)
    return jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def pool(states: jax.Array, mask: jax.Array, how: str) -> jax.Array:
    if how == "mean":
        return mean_pool(states, mask)
    if how == "last":
        return last_token_pool(states, mask)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {how!r}")
