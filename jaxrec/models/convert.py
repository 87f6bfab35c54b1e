"""HF checkpoint <-> Flax parameters, through the reversible table of the
model's family (``jaxrec.models.families``).

Each rule names an HF tensor (with ``{layer}`` for per-layer tensors), the
Flax path it lands on, and a layout transform with its inverse. Per-layer
tensors are stacked on a leading ``layers`` axis for ``nn.scan``.
"""

from __future__ import annotations

import re
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models.decoder_config import DecoderConfig
from jaxrec.models.families import family
from jaxrec.models.rules import Rule
from jaxrec.models.sources import CheckpointError, TensorSource

# Tensors that HF checkpoints may carry but that hold no learned weights.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def rules_for(config: DecoderConfig) -> list[Rule]:
    """The conversion table of ``config``'s model family."""
    return family(config.model_type).rules(config)


def abstract_params(config: DecoderConfig) -> dict:
    """Shapes and dtypes of the model's parameters, without allocating them."""
    from jaxrec.models.decoder import Decoder, abstract_variables

    return nn.unbox(abstract_variables(Decoder(config)))["params"]


def hf_tensor_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor a checkpoint of ``config`` holds, with its shape."""
    shapes = abstract_params(config)
    out = {}
    for rule in rules_for(config):
        target = _get(shapes, rule.path)
        per_tensor = target.shape[1:] if rule.per_layer else target.shape
        hf_shape = tuple(rule.layout.to_hf(np.zeros(per_tensor, np.int8)).shape)
        out.update({key: hf_shape for key in rule.hf_keys(config.num_layers)})
    return out


def _get(tree: dict, path: tuple[str, ...]):
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _check_names(rules: list[Rule], config: DecoderConfig, source: TensorSource, origin: str) -> None:
    expected = {key for rule in rules for key in rule.hf_keys(config.num_layers)}
    available = {name for name in source.names() if not _IGNORED.search(name)}
    missing = sorted(expected - available)
    extra = sorted(available - expected)
    problems = []
    if missing:
        problems.append(f"missing tensor(s) {_list(missing)}")
    if extra:
        where = source.where(extra[0])
        problems.append(f"unexpected tensor(s) {_list(extra)} (first one in {where})")
    if problems:
        raise CheckpointError(
            f"{origin}: checkpoint does not match its config "
            f"({config.model_type}, {config.num_layers} layers, tie_word_embeddings={config.tie_word_embeddings}): "
            + "; ".join(problems)
        )


def _list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def params_from_source(config: DecoderConfig, source: TensorSource, origin: str, shardings: dict | None = None) -> dict:
    """Build Flax params tensor by tensor, straight into their shards.

    ``shardings`` (a tree like the params; default: whole arrays on the
    default device, uncommitted) says where each leaf goes. A process fills host buffers only
    for the shards its own devices hold, one leaf at a time, reading each HF
    tensor once; so with fsdp > 1 no process and no device ever holds the whole
    model, and the peak beyond the shards is one leaf's shards plus one tensor.
    """
    rules = rules_for(config)
    _check_names(rules, config, source, origin)
    shapes = abstract_params(config)
    params: dict = {}
    for rule in rules:
        target = _get(shapes, rule.path)
        sharding = _get(shardings, rule.path) if shardings is not None else None
        shards = _LocalShards(target.shape, target.dtype, sharding)
        for index, key in enumerate(rule.hf_keys(config.num_layers)):
            tensor = source.read(key)
            want = target.shape[1:] if rule.per_layer else target.shape
            try:
                converted = rule.layout.to_flax(tensor)
            except ValueError:
                converted = None
            if converted is None or converted.shape != tuple(want):
                expected_hf = rule.layout.to_hf(np.zeros(want, np.int8)).shape
                raise CheckpointError(
                    f"{source.where(key)}: tensor {key!r} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(expected_hf)} for this config"
                )
            shards.fill(converted, layer=index if rule.per_layer else None)
            del tensor, converted
        _set(params, rule.path, shards.to_array())
    return params


class _LocalShards:
    """Host buffers for the distinct shards of one parameter that this
    process's devices hold, filled one HF tensor at a time."""

    def __init__(self, shape: tuple[int, ...], dtype, sharding: jax.sharding.Sharding | None):
        self.shape, self.sharding = tuple(shape), sharding
        self.device_block = {}
        self.buffers: dict[tuple, np.ndarray] = {}
        # no sharding: one whole buffer, placed later like any host array (uncommitted)
        places = (sharding.addressable_devices_indices_map(self.shape) if sharding is not None
                  else {None: tuple(slice(None) for _ in self.shape)})
        for device, index in places.items():
            block = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, self.shape))
            self.device_block[device] = _key(block)
            if _key(block) not in self.buffers:
                self.buffers[_key(block)] = np.empty([s.stop - s.start for s in block], dtype=dtype)

    def fill(self, value: np.ndarray, layer: int | None) -> None:
        """Copy ``value`` (the whole parameter, or layer ``layer`` of a stacked one) into every shard."""
        for key, buffer in self.buffers.items():
            block = tuple(slice(a, b) for a, b in key)
            if layer is None:
                buffer[...] = value[block]
            elif block[0].start <= layer < block[0].stop:
                buffer[layer - block[0].start] = value[block[1:]]

    def to_array(self) -> jax.Array:
        if self.sharding is None:
            (whole,) = self.buffers.values()
            return jnp.asarray(whole)
        pieces = [jax.device_put(self.buffers[block], device) for device, block in self.device_block.items()]
        self.buffers.clear()
        return jax.make_array_from_single_device_arrays(self.shape, self.sharding, pieces)


def _key(block: tuple[slice, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.stop) for s in block)


def params_to_hf(config: DecoderConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The inverse of :func:`params_from_source`: yields (HF key, array) one at a time."""
    for rule in rules_for(config):
        stacked = np.asarray(jax.device_get(_get(params, rule.path)))
        for index, key in enumerate(rule.hf_keys(config.num_layers)):
            leaf = stacked[index] if rule.per_layer else stacked
            yield key, np.ascontiguousarray(rule.layout.to_hf(leaf))
