"""Building blocks of the decoder: projections, RMSNorm, RoPE, attention, SwiGLU.

Parameters carry logical axis names (``embed``, ``heads``, ``kv_heads``,
``head_dim``, ``mlp``, ``vocab``) so a config can map them onto a device mesh.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange

from jaxrec.sharding import batch_devices, dimension_axes, physical_spec

MASK_KINDS = ("causal", "bidirectional")

_init = nn.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters on the projections whose module name matches ``targets``."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = "q|k|v|o|gate|up|down"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


_lora_a_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # PyTorch's Linear default


def flat_matmul(x: jax.Array, kernel: jax.Array, contract_dims: int, operands: str | None = None) -> jax.Array:
    """``tensordot(x, kernel, contract_dims)`` as one 2-D matrix product on
    [tokens, inputs] x [inputs, outputs]. The same math, but differentiated
    as 2-D products: on CPU, XLA lowers the backward of the (batch, length)
    tensordot's weight gradient with the output gradient transposed
    element by element first, which cost a LoRA step more than its matmuls.
    ``operands``: round both to this dtype, accumulating in ``x``'s."""
    lead, inputs = x.shape[: x.ndim - contract_dims], x.shape[x.ndim - contract_dims :]
    outputs = kernel.shape[contract_dims:]
    rows = x.reshape(-1, math.prod(inputs))
    matrix = kernel.reshape(math.prod(inputs), math.prod(outputs))
    if operands is None or jnp.dtype(operands) == x.dtype:
        product = rows @ matrix
    else:
        product = jnp.matmul(rows.astype(operands), matrix.astype(operands), preferred_element_type=x.dtype)
    return product.reshape(lead + outputs)


class Projection(nn.Module):
    """Contract the last ``contract_dims`` axes of the input with a kernel of
    shape ``input_shape[-contract_dims:] + features``.

    With a matching ``lora`` spec, a low-rank update ``x A B * alpha / rank`` is
    added; A and B live in the ``lora`` variable collection, B starts at zero.
    """

    features: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    contract_dims: int = 1
    use_bias: bool = False
    dtype: str = "float32"
    param_dtype: str = "float32"
    lora: LoraSpec | None = None
    deterministic: bool = True
    matmul_dtype: str | None = None
    """Round the input and kernel to this dtype for the product (LoRA's stays in ``dtype``)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = tuple(x.shape[-self.contract_dims :])
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_init, self.kernel_axes),
            in_shape + tuple(self.features),
            self.param_dtype,
        )
        y = flat_matmul(x.astype(self.dtype), kernel.astype(self.dtype), self.contract_dims, self.matmul_dtype)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[self.contract_dims :]),
                tuple(self.features),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        if self.lora is not None and re.fullmatch(self.lora.targets, self.name or ""):
            y = y + self._lora_update(x, in_shape)
        return y

    def _lora_update(self, x: jax.Array, in_shape: tuple[int, ...]) -> jax.Array:
        spec = self.lora
        in_axes = self.kernel_axes[: self.contract_dims]
        out_axes = self.kernel_axes[self.contract_dims :]
        a_init = nn.with_logical_partitioning(_lora_a_init, in_axes + ("lora_rank",))
        b_init = nn.with_logical_partitioning(nn.initializers.zeros, ("lora_rank",) + out_axes)
        # the rng is drawn only when the variable is created (init), never in apply
        a = self.variable("lora", "a", lambda: a_init(self.make_rng("params"), in_shape + (spec.rank,), jnp.float32))
        b = self.variable("lora", "b", lambda: b_init(self.make_rng("params"), (spec.rank,) + tuple(self.features), jnp.float32))
        a, b = a.value, b.value
        x = nn.Dropout(spec.dropout, deterministic=self.deterministic)(x)
        low = flat_matmul(x.astype(self.dtype), a.astype(self.dtype), self.contract_dims)
        # scaling the rank x features factor, not the tokens x features product,
        # spares a pass over the output in the forward and the backward
        return flat_matmul(low, (b * spec.scale).astype(self.dtype), 1)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the compute dtype before the scale."""

    eps: float
    dtype: str = "float32"
    param_dtype: str = "float32"
    axis_name: str = "embed"
    """The logical axis of the normalised (last) dimension."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)), (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


def _batch_context():
    """(abstract mesh, logical rules) of the training step in context, or None
    outside one (plain calls)."""
    mesh, rules = jax.sharding.get_abstract_mesh(), dict(nn.get_logical_axis_rules())
    return None if mesh.empty or not rules.get("batch") else (mesh, rules)


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pin an activation's leading (batch) axis to the mesh axes the logical
    rule ``batch`` names, when a mesh and rules are in context (training
    steps set them; plain calls are unchanged). Without it, sharding
    propagation may follow fsdp-sharded weights and all-gather the whole
    batch's activations on every device instead of gathering each layer's
    weights; axes that do not divide the batch are left out."""
    context = _batch_context()
    if context is None:
        return x
    logical = ("batch",) + (None,) * (x.ndim - 1)
    return jax.lax.with_sharding_constraint(x, physical_spec(x.shape, logical, *context))


def batch_groups(rows: int) -> int:
    """Devices a batch of ``rows`` rows is split over in the training step in
    context (1 outside one): a loss that gathers positions across rows does so
    within each device's rows, so the gathered work stays split too."""
    context = _batch_context()
    if context is None:
        return 1
    return batch_devices(context[0], dimension_axes((rows,), ("batch",), *context)[0])


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Position of every token counted from the first real token of its
    segment, so left and right padding give real tokens the same positions as
    no padding.

    ``attention_mask`` holds 0 for padding and a segment id for real tokens: a
    0/1 mask is one sequence per row; a packed row holds several sequences
    with distinct consecutive ids (1, 1, 2, 2, 2, 3, 0, 0), each starting at
    position 0 and attending only within itself.
    """
    segments = attention_mask.astype(jnp.int32)
    index = jnp.cumsum((segments > 0).astype(jnp.int32), axis=-1) - 1
    previous = jnp.pad(segments, [(0, 0)] * (segments.ndim - 1) + [(1, 0)])[..., :-1]
    starts = (segments > 0) & (segments != previous)
    first = jax.lax.cummax(jnp.where(starts, index, 0), axis=segments.ndim - 1)
    return jnp.maximum(index - first, 0)


def rope_tables(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [batch, length, head_dim] with float32 angles."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq.astype(jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Split-half rotation of x [batch, length, heads, head_dim]."""
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    out = x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def attention_mask_matrix(attention_mask: jax.Array, kind: str) -> jax.Array:
    """Boolean [batch, 1, query, key] mask from a [batch, length] padding (or
    segment id, see ``positions_from_mask``) mask: real tokens see the real
    tokens of their own segment only.

    Every query may see itself, so rows of padding never have an empty softmax;
    real tokens never see padding.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask must be one of {MASK_KINDS}, got {kind!r}")
    length = attention_mask.shape[-1]
    segments = attention_mask.astype(jnp.int32)
    visible = (segments[:, None, :, None] == segments[:, None, None, :]) & (segments > 0)[:, None, None, :]
    if kind == "causal":
        visible = visible & jnp.tril(jnp.ones((length, length), bool))[None, None]
    return visible | jnp.eye(length, dtype=bool)[None, None]


def past_attention_mask(past_mask: jax.Array, mask: jax.Array) -> jax.Array:
    """[batch, 1, query, past + key]: ``mask`` [batch, 1, query, key] with every
    real token of the past (``past_mask`` [batch, past], 0 at padding) visible
    to every query in front of it."""
    visible = jnp.broadcast_to((past_mask > 0)[:, None, None, :], mask.shape[:3] + past_mask.shape[-1:])
    return jnp.concatenate([visible, mask], axis=-1)


def dense_attention(q, k, v, mask, *, dropout_rate: float, dropout_rng, dtype) -> jax.Array:
    """Reference attention with explicit softmax, used when attention dropout is on.

    q [b, t, h, d], k/v [b, s, kv, d], mask [b, 1, t, s] -> [b, t, h, d].
    """
    q = rearrange(q, "b t (k g) d -> b t k g d", k=k.shape[2])  # the query heads that share each KV head
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) / jnp.sqrt(q.shape[-1]).astype(jnp.float32)
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(dtype), v)
    return rearrange(out, "b t k g d -> b t (k g) d")


class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    head_dim: int
    qkv_bias: bool
    o_bias: bool
    dropout_rate: float
    deterministic: bool
    dtype: str = "float32"
    param_dtype: str = "float32"
    lora: LoraSpec | None = None
    qk_norm_eps: float | None = None
    """With a value, an RMSNorm over each head's query and key before RoPE (Qwen3)."""
    matmul_dtype: str | None = None

    @nn.compact
    def __call__(self, x, cos, sin, mask, past=None):
        """-> (output, (keys, values) of ``x`` after RoPE). ``past``: (keys,
        values) [batch, past length, kv heads, head dim] of earlier tokens that
        ``x`` attends to before its own (``mask`` then covers both, past first)."""

        def proj(name, features, axes, bias, contract=1):
            return Projection(
                features, axes, contract, bias, self.dtype, self.param_dtype, self.lora, self.deterministic,
                self.matmul_dtype, name=name,
            )

        q = proj("q", (self.num_heads, self.head_dim), ("embed", "heads", "head_dim"), self.qkv_bias)(x)
        k = proj("k", (self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"), self.qkv_bias)(x)
        v = proj("v", (self.num_kv_heads, self.head_dim), ("embed", "kv_heads", "head_dim"), self.qkv_bias)(x)
        if self.qk_norm_eps is not None:
            head_norm = lambda name: RMSNorm(self.qk_norm_eps, self.dtype, self.param_dtype, "head_dim", name=name)
            q, k = head_norm("q_norm")(q), head_norm("k_norm")(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        own = (k, v)
        if past is not None:
            k, v = (jnp.concatenate([earlier.astype(now.dtype), now], axis=1) for earlier, now in zip(past, own))
        if self.dropout_rate > 0.0 and not self.deterministic:
            out = dense_attention(
                q, k, v, mask,
                dropout_rate=self.dropout_rate,
                dropout_rng=self.make_rng("dropout"),
                dtype=self.dtype,
            )
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        hidden = x.shape[-1]
        return proj("o", (hidden,), ("heads", "head_dim", "embed"), self.o_bias, contract=2)(out), own


class SwiGLU(nn.Module):
    intermediate_size: int
    dtype: str = "float32"
    param_dtype: str = "float32"
    lora: LoraSpec | None = None
    deterministic: bool = True
    matmul_dtype: str | None = None

    @nn.compact
    def __call__(self, x):
        def proj(name, features, axes):
            return Projection(
                features, axes, 1, False, self.dtype, self.param_dtype, self.lora, self.deterministic,
                self.matmul_dtype, name=name,
            )

        gate = proj("gate", (self.intermediate_size,), ("embed", "mlp"))(x)
        up = proj("up", (self.intermediate_size,), ("embed", "mlp"))(x)
        return proj("down", (x.shape[-1],), ("mlp", "embed"))(nn.silu(gate) * up)

