"""HF checkpoint <-> Flax parameters, as one reversible table.

Each rule names an HF tensor (with ``{layer}`` for per-layer tensors), the
Flax path it lands on, and a layout transform with its inverse. Per-layer
tensors are stacked on a leading ``layers`` axis for ``nn.scan``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models.decoder_config import DecoderConfig
from jaxrec.models.sources import CheckpointError, TensorSource

# Tensors that HF checkpoints may carry but that hold no learned weights.
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


@dataclasses.dataclass(frozen=True)
class Layout:
    """A pair of inverse array transforms between HF and Flax layouts."""

    to_flax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Layout(lambda w: w, lambda w: w)
TRANSPOSE = Layout(lambda w: w.T, lambda w: w.T)


def split_heads_out(heads: int) -> Layout:
    """HF [heads*head_dim, in] <-> Flax [in, heads, head_dim]."""
    return Layout(
        lambda w: w.T.reshape(w.shape[1], heads, w.shape[0] // heads),
        lambda k: k.reshape(k.shape[0], -1).T,
    )


def split_heads_in(heads: int) -> Layout:
    """HF [out, heads*head_dim] <-> Flax [heads, head_dim, out]."""
    return Layout(
        lambda w: w.T.reshape(heads, w.shape[1] // heads, w.shape[0]),
        lambda k: k.reshape(-1, k.shape[-1]).T,
    )


def split_heads_bias(heads: int) -> Layout:
    """HF [heads*head_dim] <-> Flax [heads, head_dim]."""
    return Layout(lambda b: b.reshape(heads, -1), lambda b: b.reshape(-1))


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_key: str
    path: tuple[str, ...]
    layout: Layout = IDENTITY

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.hf_key

    def hf_keys(self, num_layers: int) -> list[str]:
        if self.per_layer:
            return [self.hf_key.format(layer=i) for i in range(num_layers)]
        return [self.hf_key]


def rules_for(config: DecoderConfig) -> list[Rule]:
    """The conversion table for a LLaMA / Qwen2 decoder."""
    h, kv = config.num_heads, config.num_kv_heads
    layer = "model.layers.{layer}."
    rules = [
        Rule("model.embed_tokens.weight", ("embed", "embedding")),
        Rule("model.norm.weight", ("final_norm", "scale")),
        Rule(layer + "input_layernorm.weight", ("layers", "input_norm", "scale")),
        Rule(layer + "post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale")),
        Rule(layer + "self_attn.q_proj.weight", ("layers", "attn", "q", "kernel"), split_heads_out(h)),
        Rule(layer + "self_attn.k_proj.weight", ("layers", "attn", "k", "kernel"), split_heads_out(kv)),
        Rule(layer + "self_attn.v_proj.weight", ("layers", "attn", "v", "kernel"), split_heads_out(kv)),
        Rule(layer + "self_attn.o_proj.weight", ("layers", "attn", "o", "kernel"), split_heads_in(h)),
        Rule(layer + "mlp.gate_proj.weight", ("layers", "mlp", "gate", "kernel"), TRANSPOSE),
        Rule(layer + "mlp.up_proj.weight", ("layers", "mlp", "up", "kernel"), TRANSPOSE),
        Rule(layer + "mlp.down_proj.weight", ("layers", "mlp", "down", "kernel"), TRANSPOSE),
    ]
    if config.qkv_bias:
        for name, heads in (("q", h), ("k", kv), ("v", kv)):
            rules.append(
                Rule(layer + f"self_attn.{name}_proj.bias", ("layers", "attn", name, "bias"), split_heads_bias(heads))
            )
    if config.o_bias:
        rules.append(Rule(layer + "self_attn.o_proj.bias", ("layers", "attn", "o", "bias")))
    if not config.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", ("lm_head", "kernel"), TRANSPOSE))
    return rules


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
