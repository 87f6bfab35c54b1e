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


def params_from_source(config: DecoderConfig, source: TensorSource, origin: str) -> dict:
    """Build Flax params tensor by tensor; each leaf is filled in a host buffer
    in the parameter dtype, moved to the device, and released."""
    rules = rules_for(config)
    _check_names(rules, config, source, origin)
    shapes = abstract_params(config)
    params: dict = {}
    for rule in rules:
        target = _get(shapes, rule.path)
        buffer = np.empty(target.shape, dtype=target.dtype)
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
            if rule.per_layer:
                buffer[index] = converted
            else:
                buffer[...] = converted
            del tensor, converted
        _set(params, rule.path, jnp.asarray(buffer))
        del buffer
    return params


def params_to_hf(config: DecoderConfig, params: dict) -> Iterator[tuple[str, np.ndarray]]:
    """The inverse of :func:`params_from_source`: yields (HF key, array) one at a time."""
    for rule in rules_for(config):
        stacked = np.asarray(jax.device_get(_get(params, rule.path)))
        for index, key in enumerate(rule.hf_keys(config.num_layers)):
            leaf = stacked[index] if rule.per_layer else stacked
            yield key, np.ascontiguousarray(rule.layout.to_hf(leaf))
