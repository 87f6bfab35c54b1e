"""A sequential recommender: an item representation plus a backbone, with its
training loss and the user / item vectors that evaluation scores.

Frozen inputs live in the ``constants`` collection (the LLM item matrix, and
for RAT the ID model's item table): they travel with the frozen partition into
the jitted step instead of being baked into it as literals.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.objectives.similarity import soft_clip_loss
from jaxrec.seqrec.item_vectors import FrozenTextAdapter, IDEmbedding
from jaxrec.seqrec.losses import full_softmax_loss, sampled_bce_loss
from jaxrec.seqrec.models import BACKBONES, Backbone, embedding_initializer
from jaxrec.seqrec.spec import RecommenderSpec


def backbone_class(spec: RecommenderSpec) -> type[Backbone]:
    return BACKBONES[spec.backbone.model]


def _widths(spec: RecommenderSpec) -> tuple[int, int]:
    """(ID embedding width, LLM adapter output width); 0 where unused."""
    hidden, items = spec.backbone.hidden, spec.items
    if items.kind == "id":
        return hidden, 0
    if items.kind == "llm":
        return 0, hidden
    if items.combine == "sum":
        return hidden, hidden
    return hidden // 2, hidden - hidden // 2


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
        backbone, items = self.spec.backbone, self.spec.items
        self.backbone = backbone_class(self.spec)(backbone, self.num_items)
        id_width, llm_width = _widths(self.spec)
        if id_width:
            self.id_items = IDEmbedding(self.num_items, id_width,
                                        embedding_initializer(backbone.weight_init, backbone.embedding_init))
        if llm_width:
            self.llm_matrix = self.variable("constants", "llm_items", jnp.zeros, (self.num_items + 1, self.llm_dim))
            self.adapter = FrozenTextAdapter((*items.adapter, llm_width), items.adapter_init, items.adapter_norm)
        if self.align_dim:
            self.align_table = self.variable("constants", "align_items", jnp.zeros, (self.num_items + 1, self.align_dim))

    def adapted_llm_items(self, rows: jax.Array | None = None) -> jax.Array:
        """The adapter's output for every item, or for the item ids ``rows`` only
        (whose first entry is the padding item 0, which the adapter zeroes)."""
        matrix = self.llm_matrix.value
        return self.adapter(matrix if rows is None else matrix[rows])

    def new_item_vectors(self, llm_rows: jax.Array) -> jax.Array:
        """Vectors of items added after training, from their frozen-matrix rows: the
        trained adapter's output; an ID part, where the model has one, is zero (nothing
        was learned for them)."""
        padded = jnp.concatenate([jnp.zeros((1, llm_rows.shape[1]), llm_rows.dtype), llm_rows])
        adapted = self.adapter(padded)[1:]  # the adapter zeroes row 0, the padding item's
        id_width, _ = _widths(self.spec)
        if not id_width or self.spec.items.combine == "sum":
            return adapted
        return jnp.concatenate([jnp.zeros((adapted.shape[0], id_width), adapted.dtype), adapted], axis=1)

    def items(self, rows: jax.Array | None = None) -> jax.Array:
        """[num_items + 1, hidden] item vectors (row 0, padding, is zero), or
        those of the item ids ``rows`` only (see :func:`batch_item_rows`)."""
        return self._items_and_adapted(rows)[0]

    def _items_and_adapted(self, rows: jax.Array | None, training: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """(the item vectors, the adapter's part of them or None without LLM items);
        ``training``: with ``id_dropout``, a random share of the items lose their ID part."""
        spec = self.spec.items
        id_width, llm_width = _widths(self.spec)
        adapted = self.adapted_llm_items(rows) if llm_width else None
        if not id_width:
            return adapted, adapted
        ids = self.id_items() if rows is None else self.id_items()[rows]
        if training and adapted is not None and spec.id_dropout > 0:
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - spec.id_dropout, (ids.shape[0], 1))
            ids = ids * keep  # not rescaled: an item without a trained ID vector has none at all
        if adapted is None:
            return ids, None
        return (ids + adapted if spec.combine == "sum" else jnp.concatenate([ids, adapted], axis=1)), adapted

    def __call__(self, history: jax.Array, deterministic: bool = True, last_only: bool = False,
                 rows: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """(states [B, L, hidden], or [B, 1, hidden] at each row's last real item
        with ``last_only``; item vectors [num_items + 1, hidden]). With ``rows``,
        the item vectors are those of the ids ``rows`` and ``history`` indexes them."""
        states, items, _ = self.forward(history, deterministic, last_only, rows)
        return states, items

    def forward(self, history: jax.Array, deterministic: bool = True, last_only: bool = False,
                rows: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """``__call__``'s (states, item vectors), and the adapter's part of the item
        vectors (None without LLM items), which RAT's alignment loss reuses."""
        items, adapted = self._items_and_adapted(rows, training=not deterministic)
        return self.backbone(history, self.backbone.input_table(items), deterministic, last_only), items, adapted

    def training_inputs(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(history, targets) of a training batch as the backbone reads them (BERT4Rec masks items)."""
        return self.backbone.training_inputs(rng, batch)

    def user_vectors(self, history: jax.Array, items: jax.Array) -> jax.Array:
        """The representation of each right-padded history, given the item
        vectors (``items()``, computed once per evaluation rather than per
        user batch): the state at the last position of the backbone's
        ``user_history`` (SASRec, GRU4Rec: the last item; BERT4Rec: a mask appended after it)."""
        return self.backbone(self.backbone.user_history(history), self.backbone.input_table(items), last_only=True)[:, 0]

    def alignment_loss(self, targets: jax.Array, rng: jax.Array, rows: jax.Array | None = None,
                       adapted: jax.Array | None = None, slots: int | None = None) -> jax.Array:
        """RAT: soft-CLIP between the adapted LLM vectors and the ID model's of
        the items at the batch's target positions (at most ``alignment.max_items`` of
        them, at randomly chosen positions, or all; padding takes no part).
        With ``rows``, ``targets`` index the item ids ``rows``; ``adapted``: the
        adapter's output for those items when the caller has it (``forward``).
        ``slots`` (:func:`align_slots`): a bound on the batch's real target
        positions, so that only that many are scored, not every position."""
        adapted = self.adapted_llm_items(rows) if adapted is None else adapted
        chosen = flat = targets.reshape(-1)
        alignment = self.spec.alignment
        budget = min((b for b in (alignment.max_items, slots) if b is not None), default=flat.size)
        if budget < flat.size:
            order = jnp.where(flat > 0, jax.random.uniform(rng, flat.shape), 2.0)  # real positions first, shuffled
            chosen = flat[jnp.argsort(order)[:budget]]
        aligned = self.align_table.value[chosen if rows is None else rows[chosen]]
        tau = jnp.asarray(alignment.tau, jnp.float32)
        return soft_clip_loss(adapted[chosen], aligned, tau, alignment.normalize, valid=chosen > 0)


def maps_batch_items(spec: RecommenderSpec) -> bool:
    """Whether training computes the vectors of the batch's items only: under the
    sampled BCE loss nothing else is scored, and with LLM items that spares the
    adapter the rest of the catalogue (a backbone that replaces items, BERT4Rec, keeps
    the whole table: its replacements may be any item)."""
    return spec.loss == "bce" and spec.items.uses_llm and not backbone_class(spec).masks_items


def slots_for(count: int, rows: int) -> np.ndarray:
    """Zeros [rows, k] whose size (rows * k) bounds ``count``: a jitted step reads
    the bound from the shape. ``k`` comes from a short ladder (1, 2, 3, 4, 6, 8,
    12, ...), so few sizes ever compile, and processes of a multi-process job
    agree on the largest (every array's trailing width is)."""
    needed = max(-(-count // rows), 1)
    power = 1 << (needed - 1).bit_length()  # the smallest power of two >= needed
    k = power * 3 // 4 if power >= 4 and power * 3 // 4 >= needed else power
    return np.zeros((rows, k), np.int8)


def item_slots(batch: dict[str, np.ndarray], num_items: int) -> np.ndarray | None:
    """For a BCE batch, :func:`slots_for` the batch's distinct item ids, padding
    included. None where the bound would reach the catalogue: then the whole
    table is cheaper than the gather."""
    ids = np.unique(np.concatenate([batch[key].reshape(-1) for key in ("history", "targets", "negatives")]))
    slots = slots_for(len(ids) + 1, len(batch["history"]))  # + 1: the padding item, always there
    return None if slots.size >= num_items + 1 else slots


def counts_align_targets(spec: RecommenderSpec) -> bool:
    """Whether RAT's batches bound their real targets (:func:`align_slots`): a
    backbone that masks items, BERT4Rec, chooses its targets inside the step."""
    return spec.alignment.to is not None and not backbone_class(spec).masks_items


def align_slots(batch: dict[str, np.ndarray]) -> np.ndarray:
    """For RAT, :func:`slots_for` the batch's real target positions: the
    alignment scores that many at most (and at most ``alignment.max_items``)."""
    return slots_for(int(np.count_nonzero(batch["targets"])), len(batch["targets"]))


def batch_item_rows(batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch's distinct item ids ``rows`` (sorted, so the padding item 0 comes
    first; as many as the ``item_slots`` have, the rest 0) and the batch with
    ``history``, ``targets`` and ``negatives`` as indices into ``rows``. Index 0
    is still the padding item, so every ``> 0`` test keeps its meaning."""
    keys = ("history", "targets", "negatives")
    ids = jnp.concatenate([jnp.zeros(1, batch["history"].dtype)] + [batch[key].reshape(-1) for key in keys])
    rows, local = jnp.unique(ids, size=batch["item_slots"].size, fill_value=0, return_inverse=True)
    local = local.reshape(-1)[1:].astype(batch["history"].dtype)
    sizes = np.cumsum([batch[key].size for key in keys])[:-1]
    parts = jnp.split(local, sizes)
    return rows, {**batch, **{key: part.reshape(batch[key].shape) for key, part in zip(keys, parts)}}


def make_objective(model: Recommender, held_out: np.ndarray | None = None):
    """(init, loss) for the training engine. Batches: ``history`` [B, L] and
    ``targets`` [B, L] int32 (0 = no target at that position); for the BCE
    loss ``negatives`` [B, L, negatives] (drawn on the host where a target is,
    0 elsewhere; never the user's items) and optionally ``item_slots`` (:func:`item_slots`: score the batch's
    items only); optionally ``align_slots`` (:func:`align_slots`); and the backbone's ``batch_fields`` (BERT4Rec: ``mask_last`` [B], rows that mask only their last item).
    ``held_out``: item ids the softmax never offers (held-out cold items)."""
    spec = model.spec
    candidates = None
    if held_out is not None and len(held_out):
        candidates = np.setdiff1d(np.arange(1, model.num_items + 1), held_out).astype(np.int32)

    def loss(variables, _objective_params, batch, rng):
        dropout_rng, mask_rng, align_rng = jax.random.split(rng, 3)
        rows = None
        if "item_slots" in batch:
            rows, batch = batch_item_rows(batch)
        history, targets = model.apply(variables, mask_rng, batch, method=Recommender.training_inputs)
        # prefixes: one target per row, at its last real position
        last_only = spec.examples == "prefixes"
        states, items, adapted = model.apply(variables, history, deterministic=False, last_only=last_only, rows=rows,
                                             rngs={"dropout": dropout_rng}, method=Recommender.forward)
        negatives = batch.get("negatives")
        if last_only:  # the one scored position's target and negatives (every other position holds 0)
            targets = jnp.max(targets, axis=1, keepdims=True)
            negatives = None if negatives is None else jnp.max(negatives, axis=1, keepdims=True)
        if spec.loss == "softmax":
            next_item = full_softmax_loss(states, items, targets, candidates)
        else:
            next_item = sampled_bce_loss(states, items, targets, negatives)
        metrics = {"next_item_loss": next_item}
        total = next_item
        if model.align_dim:
            slots = batch["align_slots"].size if "align_slots" in batch else None
            align = model.apply(variables, targets, align_rng, rows, adapted, slots, method=Recommender.alignment_loss)
            metrics["align_loss"] = align
            total = total + spec.alignment.weight * align
        return total, metrics

    return (lambda rng: {}), loss


def init_variables(model: Recommender, rng: jax.Array, llm_items: np.ndarray | None, align_items: np.ndarray | None) -> dict:
    """Fresh trainable parameters, with the given frozen matrices as constants."""
    variables = dict(model.init(rng, jnp.ones((1, model.spec.backbone.max_history), jnp.int32)))
    constants = dict(variables.get("constants", {}))
    if llm_items is not None:
        constants["llm_items"] = jnp.asarray(llm_items, jnp.float32)
    if align_items is not None:
        constants["align_items"] = jnp.asarray(align_items, jnp.float32)
    if constants:
        variables["constants"] = constants
    return variables
