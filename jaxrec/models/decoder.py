"""The decoder LM (the LLaMA, Qwen2 and Qwen3 families) as a Flax Linen module.

Layers run under ``nn.scan`` over stacked per-layer parameters, so a 30-layer
model compiles one layer. The attention mask kind ("causal" or
"bidirectional") is an argument of every call, not a property of the weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.models.decoder_config import REMAT_POLICIES, DecoderConfig
from jaxrec.models.layers import (
    Attention,
    constrain_batch,
    Projection,
    RMSNorm,
    SwiGLU,
    attention_mask_matrix,
    past_attention_mask,
    positions_from_mask,
    rope_tables,
)


def abstract_variables(model: "Decoder") -> dict:
    """Shapes, dtypes and logical-axis metadata of every variable collection,
    without allocating anything."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)


class DecoderLayer(nn.Module):
    """One block; returns (output, (keys, values) after RoPE if ``keep_kv`` else None)."""

    config: DecoderConfig
    deterministic: bool = True
    keep_kv: bool = False

    @nn.compact
    def __call__(self, x, cos, sin, mask, past=None):
        c = self.config
        x = constrain_batch(x)
        norm = lambda name: RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name=name)
        attn = Attention(
            c.num_heads, c.num_kv_heads, c.head_dim, c.qkv_bias, c.o_bias,
            c.attention_dropout, self.deterministic, c.dtype, c.param_dtype, c.lora,
            c.rms_norm_eps if c.qk_norm else None, c.matmul_dtype, name="attn",
        )
        attended, kv = attn(norm("input_norm")(x), cos, sin, mask, past)
        x = x + attended
        mlp = SwiGLU(c.intermediate_size, c.dtype, c.param_dtype, c.lora, self.deterministic, c.matmul_dtype, name="mlp")
        x = x + mlp(norm("post_attn_norm")(x))
        return constrain_batch(x), kv if self.keep_kv else None


class Decoder(nn.Module):
    """``apply({"params": p}, input_ids, attention_mask, mask="causal")`` -> logits.

    ``output="hidden"`` returns the last layer's states after the final norm.
    ``select`` [groups, k] keeps only those positions before the output head
    (a loss that scores a few positions skips the rest of the vocabulary
    projection): the rows form ``groups`` equal blocks of consecutive rows and
    each group's positions count through its rows (row * length + column);
    with one group per row they are plain columns. ``injected`` [batch,
    length, hidden] replaces the token embeddings where ``inject_mask``
    [batch, length] is true (LLM-SRec puts projected recommender item vectors
    at its [HistoryEmb] tokens).

    ``output="kv"`` returns every layer's keys and values (after RoPE) instead,
    ``{"k", "v"}`` [layers, batch, length, kv heads, head dim]. Given back as
    ``past`` with ``{"mask": [batch, past length]}`` (0 at padding, the real
    tokens first), the input continues those tokens: it attends to them and
    its positions count on from them (causal, one sequence per row). A frozen, shared start of
    many prompts is then run once, and outside the gradient.
    """

    config: DecoderConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        mask: str = "causal",
        output: str = "logits",
        deterministic: bool = True,
        select: jax.Array | None = None,
        injected: jax.Array | None = None,
        inject_mask: jax.Array | None = None,
        past: dict[str, jax.Array] | None = None,
    ) -> jax.Array | dict[str, jax.Array]:
        c = self.config
        if output not in ("logits", "hidden", "kv"):
            raise ValueError(f"output must be 'logits', 'hidden' or 'kv', got {output!r}")
        if past is not None and mask != "causal":
            raise ValueError("past keys and values continue a causal decoder: mask must be 'causal'")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        embed = nn.Embed(
            c.vocab_size,
            c.hidden_size,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            name="embed",
        )
        x = embed(jnp.where(input_ids < c.vocab_size, input_ids, 0))
        if c.extra_tokens:
            extra = self.param(
                "extra_embedding",
                nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "embed")),
                (c.extra_tokens, c.hidden_size),
                c.param_dtype,
            )
            rows = jnp.clip(input_ids - c.vocab_size, 0, c.extra_tokens - 1)
            x = jnp.where((input_ids >= c.vocab_size)[..., None], extra[rows].astype(x.dtype), x)
        if injected is not None:
            x = jnp.where(inject_mask[..., None], injected.astype(x.dtype), x)
        positions = positions_from_mask(attention_mask)
        attn_mask = attention_mask_matrix(attention_mask, mask)
        past_kv = None
        if past is not None:
            positions = positions + jnp.sum(past["mask"] > 0, axis=-1, keepdims=True)
            attn_mask = past_attention_mask(past["mask"], attn_mask)
            past_kv = (past["k"], past["v"])
        cos, sin = rope_tables(positions, jnp.asarray(c.rope_inv_freq()))

        layer, policy = DecoderLayer, REMAT_POLICIES[c.remat]
        if policy is not None:
            layer = nn.remat(layer, prevent_cse=False, policy=policy)
        layers = nn.scan(
            layer,
            variable_axes={True: 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
            length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c, deterministic, output == "kv", name="layers")
        x, kv = layers(x, cos, sin, attn_mask, past_kv)
        if output == "kv":
            return {"k": kv[0], "v": kv[1]}
        x = RMSNorm(c.rms_norm_eps, c.dtype, c.param_dtype, name="final_norm")(x)
        if select is not None:
            x = x.reshape(select.shape[0], -1, x.shape[-1])
            x = jnp.take_along_axis(x, select[..., None], axis=1)
        if output == "hidden":
            return x
        if c.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = Projection((c.vocab_size,), ("embed", "vocab"), 1, False, c.dtype, c.param_dtype, name="lm_head")(x)
        return logits.astype(jnp.float32)
