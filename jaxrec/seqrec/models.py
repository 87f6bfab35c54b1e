"""SASRec and GRU4Rec as Flax modules.

Both read a history of item ids [batch, length] (0 = padding) through an item
table [num_items + 1, hidden] supplied by the caller (trainable ID embeddings,
or adapted frozen LLM embeddings), and return one state per position; the
state at the last real position is the user representation, scored against
the same table.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SeqRecConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    ffn: int | None = None
    """Feed-forward width (default: hidden)."""
    dropout: float = 0.1
    max_length: int = 50
    activation: Literal["gelu", "relu"] = "gelu"
    norm_first: bool = False
    """Pre-LN blocks; False is SASRec's original post-LN."""


class _Block(nn.Module):
    config: SeqRecConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        attend = nn.MultiHeadDotProductAttention(num_heads=c.heads, dropout_rate=c.dropout, deterministic=deterministic)
        act = nn.gelu if c.activation == "gelu" else nn.relu

        def feed_forward(h):
            h = nn.Dropout(c.dropout, deterministic=deterministic)(act(nn.Dense(c.ffn or c.hidden)(h)))
            return nn.Dense(c.hidden)(h)

        drop = lambda h: nn.Dropout(c.dropout, deterministic=deterministic)(h)
        if c.norm_first:
            h = nn.LayerNorm()(x)
            x = x + drop(attend(h, h, mask=mask))
            return x + drop(feed_forward(nn.LayerNorm()(x)))
        x = nn.LayerNorm()(x + drop(attend(x, x, mask=mask)))
        return nn.LayerNorm()(x + drop(feed_forward(x)))


class SASRec(nn.Module):
    """Causal self-attention over the history with learned positions; the
    output at position t depends only on items 0..t."""

    config: SeqRecConfig

    @nn.compact
    def __call__(self, history: jax.Array, item_table: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.config
        length = history.shape[1]
        real = history > 0
        x = item_table[history] * jnp.sqrt(float(c.hidden))
        x = x + nn.Embed(c.max_length, c.hidden, name="positions")(jnp.arange(length))[None]
        x = nn.Dropout(c.dropout, deterministic=deterministic)(x) * real[..., None]
        causal = jnp.tril(jnp.ones((length, length), bool))
        mask = (causal[None] & real[:, None, :])[:, None] | jnp.eye(length, dtype=bool)[None, None]
        for i in range(c.layers):
            x = _Block(c, name=f"block_{i}")(x, mask, deterministic) * real[..., None]
        if c.norm_first:  # pre-LN blocks leave the residual stream unnormalised
            x = nn.LayerNorm(name="final_norm")(x)
        return x


class GRU4Rec(nn.Module):
    """Stacked GRUs over the history (right-padded rows: padding comes after
    the real items and never reaches their states)."""

    config: SeqRecConfig

    @nn.compact
    def __call__(self, history: jax.Array, item_table: jax.Array, deterministic: bool = True) -> jax.Array:
        c = self.config
        x = nn.Dropout(c.dropout, deterministic=deterministic)(item_table[history])
        for i in range(c.layers):
            x = nn.RNN(nn.GRUCell(c.hidden), name=f"gru_{i}")(x)
        return nn.Dense(c.hidden, name="out")(x)


def last_state(states: jax.Array, history: jax.Array) -> jax.Array:
    """The state at each row's last real item (rows are right-padded)."""
    last = jnp.maximum(jnp.sum(history > 0, axis=1) - 1, 0)
    return jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0]
