"""Folding LoRA adapters (the ``lora`` collection) into the base weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxrec.models.layers import LoraSpec


def lora_delta(a: jax.Array, b: jax.Array, stacked: bool) -> jax.Array:
    """A B as a kernel-shaped array; ``stacked`` arrays carry a leading layer axis."""
    lead = 1 if stacked else 0
    in_shape, out_shape = a.shape[lead:-1], b.shape[lead + 1 :]
    layers = a.shape[:lead]
    a2 = a.reshape(layers + (-1, a.shape[-1]))
    b2 = b.reshape(layers + (b.shape[lead], -1))
    return jnp.matmul(a2, b2).reshape(layers + in_shape + out_shape)


def merge_lora(params: dict, lora: dict, spec: LoraSpec) -> dict:
    """Base params with ``kernel += A B * alpha / rank`` for every adapted projection."""
    flat = traverse_util.flatten_dict(params)
    adapters = traverse_util.flatten_dict(lora)
    for path in {p[:-1] for p in adapters}:
        kernel = flat[path + ("kernel",)]
        delta = lora_delta(adapters[path + ("a",)], adapters[path + ("b",)], stacked=path[0] == "layers")
        flat[path + ("kernel",)] = (kernel.astype(jnp.float32) + spec.scale * delta).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)
