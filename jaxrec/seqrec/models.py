"""SASRec, BERT4Rec and GRU4Rec as Flax modules, behind one protocol
(:class:`Backbone`).

Each reads a history of item ids [batch, length] (0 = padding) through an
item table [num_items + 1, hidden] supplied by the caller (trainable ID
embeddings, or adapted frozen LLM embeddings), and returns one state per
position; the state at the last real position (BERT4Rec: at a mask appended
after it) is the user representation, scored against the same table.
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models.layers import flat_matmul
from jaxrec.seqrec.spec import BackboneSpec


# normal(0.02) weights for every attention-model layer and embedding, as BERT
# and RecBole do: items (IDEmbedding) and positions then start at one scale
WEIGHT_INITS = {"normal": nn.initializers.normal(0.02), "xavier_normal": nn.initializers.xavier_normal()}


def embedding_initializer(weight_init: str, std: float):
    """Learned positions and ID items: normal(``std``), or xavier normal with the other matrices."""
    return nn.initializers.normal(std) if weight_init == "normal" else WEIGHT_INITS[weight_init]


class Dropout(nn.Module):
    """Inverted dropout drawing one random byte per element (four per 32-bit
    draw): about ten times cheaper than ``nn.Dropout`` on CPU, where random
    bits dominate these small models' step time. The rate is rounded to a
    multiple of 1/256 (0.1 -> 26/256), and the kept values are rescaled by
    the rounded rate, so expectations are exact."""

    rate: float
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        threshold = round(self.rate * 256)
        if self.deterministic or threshold == 0:
            return x
        words = jax.random.bits(self.make_rng("dropout"), (-(-x.size // 4),), jnp.uint32)
        draws = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[: x.size].reshape(x.shape)
        keep = draws >= threshold
        return jnp.where(keep, x * (256.0 / (256 - threshold)), 0.0).astype(x.dtype)


class Dense(nn.Module):
    """``nn.Dense``'s parameters (and, by its name, their names and initial values),
    computed as one 2-D product over the flattened positions (see ``flat_matmul``:
    faster gradients on CPU), and able to compute a slice of its output columns alone."""

    features: int
    kernel_init: str = "normal"

    @nn.compact
    def __call__(self, x: jax.Array, columns: tuple[int, int] | None = None) -> jax.Array:
        kernel = self.param("kernel", WEIGHT_INITS[self.kernel_init], (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if columns is not None:
            kernel, bias = kernel[:, columns[0]:columns[1]], bias[columns[0]:columns[1]]
        return flat_matmul(x, kernel, 1) + bias


class _SelfAttention(nn.Module):
    """Multi-head self-attention with dropout on the attention weights, laid out
    [batch, heads, length, head_dim] so both passes are plain batched matmuls
    (several times faster on CPU than general einsums over the short histories)."""

    heads: int
    dropout: float
    kernel_init: str = "normal"

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, at: jax.Array | None = None, kv: jax.Array | None = None):
        """``at`` [batch]: attend from that position of each row only (output
        [batch, 1, hidden]); keys and values still cover every position.
        ``kv``: keys and values from these states instead of ``x``."""
        batch, _, hidden = x.shape
        if hidden % self.heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {self.heads} heads")
        head_dim = hidden // self.heads
        projection = Dense(3 * hidden, self.kernel_init, name="qkv")
        if at is None and kv is None:
            q, k, v = jnp.split(projection(x), 3, axis=-1)
        else:
            # keys and values at every position, the query only where it is read
            q = projection(_at(x, at), columns=(0, hidden))
            k, v = jnp.split(projection(x if kv is None else kv, columns=(hidden, 3 * hidden)), 2, axis=-1)
            if at is not None:
                mask = jnp.take_along_axis(mask, at[:, None, None, None], axis=2)
        q, k, v = (t.reshape(batch, -1, self.heads, head_dim).transpose(0, 2, 1, 3) for t in (q, k, v))
        scores = (q @ k.swapaxes(-1, -2)) / jnp.sqrt(float(head_dim))
        weights = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(scores.dtype).min), axis=-1)
        weights = Dropout(self.dropout, deterministic)(weights)
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, q.shape[2], hidden)
        return Dense(hidden, self.kernel_init, name="out")(out)


def _gelu(x: jax.Array) -> jax.Array:
    """Exact GELU written with erf (jax.nn.gelu's erfc form is several times
    slower on CPU, and erf is how BERT and RecBole write it)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _at(x: jax.Array, at: jax.Array | None) -> jax.Array:
    """x [batch, length, ...] at one position per row ([batch, 1, ...]), or all of x."""
    return x if at is None else jnp.take_along_axis(x, at.reshape(-1, *[1] * (x.ndim - 1)), axis=1)


class _Block(nn.Module):
    config: BackboneSpec

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, at: jax.Array | None = None):
        """``at`` [batch]: compute the output at that position of each row only."""
        c = self.config
        attention = _SelfAttention(c.heads, c.dropout, c.weight_init)
        dense = functools.partial(Dense, kernel_init=c.weight_init)
        attend = lambda h, kv=None: attention(h, mask, deterministic, at, kv)
        act = _gelu if c.activation == "gelu" else nn.relu
        drop = lambda h: Dropout(c.dropout, deterministic)(h)

        def feed_forward(h):
            h = act(dense(c.ffn or c.hidden)(h))
            return dense(c.hidden)(drop(h) if c.activation_dropout else h)

        if c.norm_first and c.query_residual:
            # the public PyTorch SASRec: queries and both residuals from the
            # normalised states, keys and values from the raw ones
            h = nn.LayerNorm()(x)
            h = nn.LayerNorm()(_at(h, at) + drop(attend(h, kv=x)))
            return h + drop(feed_forward(h))
        if c.norm_first:
            h = nn.LayerNorm()(x)
            x = _at(x, at) + drop(attend(h))
            return x + drop(feed_forward(nn.LayerNorm()(x)))
        x = nn.LayerNorm()(_at(x, at) + drop(attend(x)))
        return nn.LayerNorm()(x + drop(feed_forward(x)))


class _AttentionEncoder(nn.Module):
    """Item + learned position embeddings through self-attention blocks,
    causal (SASRec) or bidirectional over the real items (BERT4Rec)."""

    config: BackboneSpec
    causal: bool

    @nn.compact
    def __call__(self, history: jax.Array, item_table: jax.Array, deterministic: bool = True,
                 last_only: bool = False) -> jax.Array:
        c = self.config
        length = history.shape[1]
        real = history > 0
        x = item_table[history] * (jnp.sqrt(float(c.hidden)) if c.scale_embeddings else 1.0)
        init = embedding_initializer(c.weight_init, c.embedding_init)
        x = x + nn.Embed(c.max_history, c.hidden, embedding_init=init, name="positions")(position_ids(history, c))
        if c.input_norm:
            x = nn.LayerNorm(name="input_norm")(x)
        x = Dropout(c.dropout, deterministic)(x)
        allowed = jnp.tril(jnp.ones((length, length), bool)) if self.causal else jnp.ones((length, length), bool)
        # no real position attends to padding, so padding states never need zeroing;
        # a padding query attends to itself only, so no row of the softmax is empty
        mask = (allowed[None] & real[:, None, :])[:, None] | jnp.eye(length, dtype=bool)[None, None]
        # only the last real position is read out: the final block need not compute the others
        last = last_position(history) if last_only else None
        for i in range(c.layers):
            at = last if i == c.layers - 1 else None
            x = _Block(c, name=f"block_{i}")(x, mask, deterministic, at)
        if c.norm_first:  # pre-LN blocks leave the residual stream unnormalised
            x = nn.LayerNorm(name="final_norm")(x)
        return x


class Backbone(nn.Module):
    """A recommender's sequence model. ``__call__`` gives the states of right-padded
    histories read through an item table; the rest is what differs between models,
    so that neither the recommender nor its task asks which model it holds. The
    defaults are those of a next-item model (SASRec, GRU4Rec); BERT4Rec, trained
    to recover masked items, overrides them."""

    config: BackboneSpec
    num_items: int = 0
    """Catalogue size (item ids 1..num_items); rows a model adds to the item table follow it."""

    readout_slots: ClassVar[int] = 0
    """Positions a user's readout adds to a history (so evaluation reads max_history minus these items)."""
    masks_items: ClassVar[bool] = False
    """Training replaces items of the history (any item of the catalogue may then enter a batch,
    and the table has rows after the catalogue, so items added after training cannot be)."""

    @classmethod
    def example_kind(cls, examples: str) -> str:
        """The kind of training examples (``histories.training_examples``) for the configured ``examples``."""
        return examples

    @classmethod
    def training_copies(cls, config: BackboneSpec) -> int:
        """How many times an epoch visits each training example."""
        return 1

    @classmethod
    def batch_fields(cls, indices: np.ndarray, examples: int) -> dict[str, np.ndarray]:
        """Fields a training batch of rows ``indices`` (of ``examples * training_copies``) adds."""
        return {}

    def input_table(self, items: jax.Array) -> jax.Array:
        """The table histories are looked up in, from the item vectors."""
        return items

    def user_history(self, history: jax.Array) -> jax.Array:
        """The history whose last state is the user's vector."""
        return history

    def training_inputs(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(history, targets) a training step reads from ``batch``."""
        return batch["history"], batch["targets"]


class SASRec(Backbone):
    """Causal self-attention over the history with learned positions; the
    output at position t depends only on items 0..t."""

    @nn.compact
    def __call__(self, history: jax.Array, item_table: jax.Array, deterministic: bool = True,
                 last_only: bool = False) -> jax.Array:
        return _AttentionEncoder(self.config, causal=True, name="encoder")(history, item_table, deterministic, last_only)


class BERT4Rec(Backbone):
    """Bidirectional self-attention over the history. Trained to recover masked
    items (:func:`mask_items`; the mask is a learned row right after the
    catalogue), it predicts the next item at a mask appended to the history."""

    readout_slots = 1
    masks_items = True

    def setup(self):
        self.encoder = _AttentionEncoder(self.config, causal=False)
        self.mask_embedding = self.param("mask_embedding", nn.initializers.normal(0.02), (1, self.config.hidden))

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    def __call__(self, history: jax.Array, item_table: jax.Array, deterministic: bool = True,
                 last_only: bool = False) -> jax.Array:
        return self.encoder(history, item_table, deterministic, last_only)

    @classmethod
    def example_kind(cls, examples: str) -> str:
        return "windows"  # each window's items are its own targets, where masked

    @classmethod
    def training_copies(cls, config: BackboneSpec) -> int:
        return 2 if config.mask_last_examples else 1  # every window again, masking only its last item

    @classmethod
    def batch_fields(cls, indices: np.ndarray, examples: int) -> dict[str, np.ndarray]:
        return {"mask_last": indices >= examples}  # the second visit of each window

    def input_table(self, items: jax.Array) -> jax.Array:
        """The items, then the mask row at ``mask_id`` (whatever rows ``items`` has beyond the catalogue)."""
        return jnp.concatenate([items[: self.mask_id], self.mask_embedding], axis=0)

    def user_history(self, history: jax.Array) -> jax.Array:
        history = jnp.pad(history, ((0, 0), (0, 1)))
        return history.at[jnp.arange(len(history)), jnp.sum(history > 0, axis=1)].set(self.mask_id)

    def training_inputs(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        c = self.config
        return mask_items(rng, batch["history"], c.mask_rate, self.mask_id, self.num_items, c.mask_random,
                          c.mask_keep, batch["mask_last"])


def mask_items(rng: jax.Array, history: jax.Array, rate: float, mask_id: int, num_items: int,
               random_share: float = 0.0, keep_share: float = 0.0,
               only_last: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """BERT4Rec's cloze task: each real item is chosen with probability
    ``rate``; a chosen item becomes a random item with probability
    ``random_share``, stays with ``keep_share``, and is otherwise replaced by
    ``mask_id``. Rows where ``only_last`` [batch] is true have just their last
    real item chosen, and masked. Returns (input history, targets: the
    original item where chosen, else 0)."""
    choose_rng, kind_rng, item_rng = jax.random.split(rng, 3)
    real = history > 0
    chosen = jax.random.bernoulli(choose_rng, rate, history.shape) & real
    kind = jax.random.uniform(kind_rng, history.shape)
    random_items = jax.random.randint(item_rng, history.shape, 1, num_items + 1)
    replacement = jnp.where(kind < random_share, random_items,
                            jnp.where(kind < random_share + keep_share, history, mask_id))
    if only_last is not None:
        last = (jnp.arange(history.shape[1])[None] == last_position(history)[:, None]) & real
        chosen = jnp.where(only_last[:, None], last, chosen)
        replacement = jnp.where(only_last[:, None], mask_id, replacement)
    return jnp.where(chosen, replacement, history), jnp.where(chosen, history, 0)


class GRU4Rec(Backbone):
    """Stacked GRUs over the history (right-padded rows: padding comes after
    the real items and never reaches their states)."""

    @nn.compact
    def __call__(self, history: jax.Array, item_table: jax.Array, deterministic: bool = True,
                 last_only: bool = False) -> jax.Array:
        c = self.config
        x = Dropout(c.dropout, deterministic)(item_table[history])
        cell = nn.GRUCell if c.gru_bias else _BiasFreeGRUCell
        for i in range(c.layers):
            x = nn.RNN(cell(c.hidden, name=f"gru_{i}"))(x)
        x = _at(x, last_position(history) if last_only else None)
        return nn.Dense(c.hidden, name="out")(x) if c.output_layer else x


class _BiasFreeGRUCell(nn.GRUCell):
    """torch's GRU(bias=False): the GRU equations with no bias anywhere
    (Flax's cell has one on each input projection and on the candidate's recurrent one)."""

    @nn.compact
    def __call__(self, carry, inputs):
        h = carry
        dense = lambda name, init: nn.Dense(h.shape[-1], use_bias=False, kernel_init=init, name=name)
        i_r, i_z, i_n = (dense(f"i{g}", self.kernel_init)(inputs) for g in "rzn")
        h_r, h_z, h_n = (dense(f"h{g}", self.recurrent_kernel_init)(h) for g in "rzn")
        r, z = self.gate_fn(i_r + h_r), self.gate_fn(i_z + h_z)
        n = self.activation_fn(i_n + r * h_n)
        new_h = (1.0 - z) * n + z * h
        return new_h, new_h


def position_ids(history: jax.Array, config: BackboneSpec) -> jax.Array:
    """[1, length] positions counted from each row's start, or [batch, length]
    counted back from its last real item (which gets max_history - 1)."""
    length = history.shape[1]
    if config.positions == "from_start":
        return jnp.arange(length)[None]
    if length > config.max_history:
        raise ValueError(f"histories of {length} items are longer than max_history {config.max_history}")
    real = jnp.sum(history > 0, axis=1, keepdims=True)
    return jnp.clip(config.max_history - real + jnp.arange(length)[None], 0, config.max_history - 1)


def last_position(history: jax.Array) -> jax.Array:
    """[batch] index of each right-padded row's last real item (0 for an empty row)."""
    return jnp.maximum(jnp.sum(history > 0, axis=1) - 1, 0)



BACKBONES: dict[str, type[Backbone]] = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}
