"""A sequential recommender: an item representation plus a backbone, with its
training loss and the user / item vectors that evaluation scores.

Frozen inputs live in the ``constants`` collection (the LLM item matrix, and
for RAT the ID model's item table): they travel with the frozen partition into
the jitted step instead of being baked into it as literals.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.objectives.scft import soft_clip_loss
from jaxrec.seqrec.item_vectors import FrozenTextAdapter, IDEmbedding
from jaxrec.seqrec.losses import full_softmax_loss, sampled_bce_loss
from jaxrec.seqrec.models import BERT4Rec, GRU4Rec, SASRec, SeqRecConfig, embedding_initializer, mask_items
from jaxrec.seqrec.spec import RecommenderSpec

BACKBONES = {"sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec}


def _widths(spec: RecommenderSpec) -> tuple[int, int]:
    """(ID embedding width, LLM adapter output width); 0 where unused."""
    if spec.items == "id":
        return spec.hidden, 0
    if spec.items == "llm":
        return 0, spec.hidden
    if spec.combine == "sum":
        return spec.hidden, spec.hidden
    return spec.hidden // 2, spec.hidden - spec.hidden // 2


def adapter_output_width(spec: RecommenderSpec) -> int:
    return _widths(spec)[1]


class Recommender(nn.Module):
    spec: RecommenderSpec
    num_items: int
    llm_dim: int = 0
    """Width of the frozen LLM item matrix (0 for ID items)."""
    align_dim: int = 0
    """Width of the ID item table to align to (0: no alignment)."""

    def setup(self):
        s = self.spec
        backbone = {f.name: getattr(s, f.name) for f in dataclasses.fields(SeqRecConfig)}
        self.backbone = BACKBONES[s.model](SeqRecConfig(**backbone))
        id_width, llm_width = _widths(s)
        if id_width:
            self.id_items = IDEmbedding(self.num_items, id_width, embedding_initializer(s.weight_init, s.embedding_init))
        if llm_width:
            self.llm_matrix = self.variable("constants", "llm_items", jnp.zeros, (self.num_items + 1, self.llm_dim))
            self.adapter = FrozenTextAdapter((*s.adapter, llm_width), s.adapter_init, s.adapter_norm)
        if self.align_dim:
            self.align_table = self.variable("constants", "align_items", jnp.zeros, (self.num_items + 1, self.align_dim))
        if s.model == "bert4rec":
            self.mask_embedding = self.param("mask_embedding", nn.initializers.normal(0.02), (1, s.hidden))

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    def adapted_llm_items(self) -> jax.Array:
        return self.adapter(self.llm_matrix.value)

    def new_item_vectors(self, llm_rows: jax.Array) -> jax.Array:
        """Vectors of items added after training, from their frozen-matrix rows: the
        trained adapter's output; an ID part, where the model has one, is zero (nothing
        was learned for them)."""
        padded = jnp.concatenate([jnp.zeros((1, llm_rows.shape[1]), llm_rows.dtype), llm_rows])
        adapted = self.adapter(padded)[1:]  # the adapter zeroes row 0, the padding item's
        id_width, _ = _widths(self.spec)
        if not id_width or self.spec.combine == "sum":
            return adapted
        return jnp.concatenate([jnp.zeros((adapted.shape[0], id_width), adapted.dtype), adapted], axis=1)

    def items(self) -> jax.Array:
        """[num_items + 1, hidden] item vectors (row 0, padding, is zero)."""
        id_width, llm_width = _widths(self.spec)
        parts = ([self.id_items()] if id_width else []) + ([self.adapted_llm_items()] if llm_width else [])
        if len(parts) == 1:
            return parts[0]
        return parts[0] + parts[1] if self.spec.combine == "sum" else jnp.concatenate(parts, axis=1)

    def input_table(self, items: jax.Array) -> jax.Array:
        """The table histories are looked up in: the items, plus BERT4Rec's mask row at
        ``mask_id`` (right after the catalogue, whatever rows ``items`` has beyond it)."""
        if self.spec.model != "bert4rec":
            return items
        return jnp.concatenate([items[: self.mask_id], self.mask_embedding], axis=0)

    def __call__(self, history: jax.Array, deterministic: bool = True, last_only: bool = False) -> tuple[jax.Array, jax.Array]:
        """(states [B, L, hidden], or [B, 1, hidden] at each row's last real item
        with ``last_only``; item vectors [num_items + 1, hidden])."""
        items = self.items()
        return self.backbone(history, self.input_table(items), deterministic, last_only), items

    def user_vectors(self, history: jax.Array, items: jax.Array) -> jax.Array:
        """The representation of each right-padded history, given the item
        vectors (``items()``, computed once per evaluation rather than per
        user batch): the state at its last item (SASRec, GRU4Rec) or at a
        mask appended after it (BERT4Rec)."""
        if self.spec.model == "bert4rec":
            history = jnp.pad(history, ((0, 0), (0, 1)))
            history = history.at[jnp.arange(len(history)), jnp.sum(history > 0, axis=1)].set(self.mask_id)
        return self.backbone(history, self.input_table(items), last_only=True)[:, 0]

    def alignment_loss(self, targets: jax.Array, rng: jax.Array) -> jax.Array:
        """RAT: soft-CLIP between the adapted LLM vectors and the ID model's of
        the items at the batch's target positions (at most ``align_items`` of
        them, at randomly chosen positions, or all; padding takes no part)."""
        chosen = flat = targets.reshape(-1)
        if self.spec.align_items is not None:
            order = jnp.where(flat > 0, jax.random.uniform(rng, flat.shape), 2.0)  # real positions first, shuffled
            chosen = flat[jnp.argsort(order)[: self.spec.align_items]]
        tau = jnp.asarray(self.spec.align_tau, jnp.float32)
        return soft_clip_loss(self.adapted_llm_items()[chosen], self.align_table.value[chosen], tau,
                              self.spec.align_normalize, valid=chosen > 0)


def make_objective(model: Recommender, held_out: np.ndarray | None = None):
    """(init, loss) for the training engine. Batches: ``history`` [B, L] and
    ``targets`` [B, L] int32 (0 = no target at that position); for the BCE
    loss ``negatives`` [B, L, negatives] (drawn on the host, never the user's
    items); for BERT4Rec ``mask_last`` [B] (rows that mask only their last item).
    ``held_out``: item ids the softmax never offers (held-out cold items)."""
    spec = model.spec
    excluded = None
    if held_out is not None and len(held_out):
        excluded = jnp.zeros(model.num_items, bool).at[jnp.asarray(held_out) - 1].set(True)

    def loss(variables, _objective_params, batch, rng):
        dropout_rng, mask_rng, align_rng = jax.random.split(rng, 3)
        history, targets = batch["history"], batch["targets"]
        if spec.model == "bert4rec":
            history, targets = mask_items(mask_rng, history, spec.mask_rate, model.mask_id, model.num_items,
                                          spec.mask_random, spec.mask_keep, batch["mask_last"])
        # prefixes: one target per row, at its last real position
        last_only = spec.examples == "prefixes"
        states, items = model.apply(variables, history, deterministic=False, last_only=last_only,
                                    rngs={"dropout": dropout_rng})
        if last_only:
            targets = jnp.max(targets, axis=1, keepdims=True)
        if spec.loss == "softmax":
            next_item = full_softmax_loss(states, items, targets, excluded)
        else:
            # prefixes keep one position per row; any of the row's negatives will do for it
            next_item = sampled_bce_loss(states, items, targets, batch["negatives"][:, : targets.shape[1]])
        metrics = {"next_item_loss": next_item}
        total = next_item
        if model.align_dim:
            align = model.apply(variables, targets, align_rng, method=Recommender.alignment_loss)
            metrics["align_loss"] = align
            total = total + spec.align_weight * align
        return total, metrics

    return (lambda rng: {}), loss


def init_variables(model: Recommender, rng: jax.Array, llm_items: np.ndarray | None, align_items: np.ndarray | None) -> dict:
    """Fresh trainable parameters, with the given frozen matrices as constants."""
    variables = dict(model.init(rng, jnp.ones((1, model.spec.max_history), jnp.int32)))
    constants = dict(variables.get("constants", {}))
    if llm_items is not None:
        constants["llm_items"] = jnp.asarray(llm_items, jnp.float32)
    if align_items is not None:
        constants["align_items"] = jnp.asarray(align_items, jnp.float32)
    if constants:
        variables["constants"] = constants
    return variables
