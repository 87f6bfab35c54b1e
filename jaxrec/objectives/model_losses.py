"""Objectives bound to the decoder: each ``make_*`` returns
``(init_params, loss)`` where ``init_params(rng)`` gives the objective's own
trainable parameters (a learnable temperature, heads; often none) and
``loss(variables, objective_params, batch, rng) -> (loss, metrics)``.

Batches (all int32 [batch, length] unless noted):
- csft: input_ids, attention_mask (padding, or segment ids for packed rows),
  target_mask, and optionally target_rows / target_columns / target_valid
  [groups, budget] (``csft.target_positions``: the logits are then computed
  at those positions only);
- mntp: input_ids, attention_mask;
- contrastive: input_ids, attention_mask (one row per item; the two views are
  made here, by dropout or by token masking);
- mntp and contrastive also take packed rows (``jaxrec.shapes.
  pack_sequences``): several items per row, ``attention_mask`` holding segment
  ids, and for contrastive ``item_row`` / ``item_segment`` [items] locating
  each item;
- scft: view_a_input_ids, view_a_attention_mask, view_b_input_ids,
  view_b_attention_mask.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from jaxrec.models.decoder import Decoder
from jaxrec.models.layers import batch_groups
from jaxrec.models.pooling import mean_pool, segment_mean_pool
from jaxrec.objectives import contrastive, csft, mntp, scft


@dataclasses.dataclass
class MaskingSpec:
    rate: float = 0.2
    mask_token: str | None = "_"
    """The text of the token that replaces masked tokens; "_" is what LLM2Rec's code uses (llm2vec's
    "blank" mask type). null: the tokenizer's own mask token, else its pad / EOS token."""
    mask_token_id: int | None = None
    """A token id used instead of ``mask_token`` (for tokenizers without a single-token "_")."""

    def __post_init__(self):
        if not 0.0 < self.rate < 1.0:
            raise ValueError(f"rate must be a share in (0, 1) of the tokens to mask, got {self.rate}")


@dataclasses.dataclass
class ContrastiveSpec:
    temperature: float = 0.1
    views: Literal["dropout", "masking"] = "dropout"
    symmetric: bool = False

    def __post_init__(self):
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0 (it divides the similarities), got {self.temperature}")


@dataclasses.dataclass
class ScftSpec:
    mask: Literal["causal", "bidirectional"] = "causal"
    """Attention while embedding the prompts (the authors' model calls the LLaMA body unchanged: causal)."""
    normalize: bool = False
    """L2-normalise the two views' embeddings before the loss (the authors' code uses them raw)."""
    views: Literal["fixed", "per_epoch"] = "fixed"
    """fixed: each item's two views are drawn once (seeded by the item), as the authors' code does;
    per_epoch: drawn afresh every time the item is batched."""
    special_tokens: Literal["eos", "bos"] = "eos"
    """eos: prompts tokenized without special tokens and EOS appended (and pooled), as the authors' code;
    bos: the tokenizer's own special tokens (a BOS for LLaMA), no EOS."""
    drop_rounding: Literal["floor", "round"] = "floor"
    """How batch.attribute_drop x the item's attribute count becomes a count: the authors floor it."""


def _apply(model: Decoder, variables, ids, mask, kind: str, output: str, rng):
    return model.apply(
        variables, ids, mask, mask=kind, output=output, deterministic=False, rngs={"dropout": rng}
    )


def _no_params(rng):
    return {}


def make_csft(model: Decoder):
    def loss(variables, _, batch, rng):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if "target_rows" not in batch:
            logits = _apply(model, variables, ids, mask, "causal", "logits", rng)
            value, count = csft.next_token_loss(logits, ids, batch["target_mask"])
            return value, {"tokens": count}
        # the vocabulary projection runs only where a target token is predicted
        positions = csft.flat_positions(batch["target_rows"], batch["target_columns"], ids.shape[1])
        logits = model.apply(variables, ids, mask, mask="causal", deterministic=False, rngs={"dropout": rng},
                             select=jnp.maximum(positions - 1, 0))
        value, count = mntp.selected_loss(logits, ids, positions, batch["target_valid"])
        return value, {"tokens": count}

    return _no_params, loss


def make_mntp(model: Decoder, spec: MaskingSpec, mask_token_id: int, special_ids: tuple[int, ...]):
    vocab = model.config.vocab_size

    def loss(variables, _, batch, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        ids = batch["input_ids"]
        corrupted, label_mask = mntp.mask_tokens(
            mask_rng, ids, batch["attention_mask"], rate=spec.rate,
            mask_token_id=mask_token_id, vocab_size=vocab, special_ids=special_ids,
        )
        # the vocabulary projection runs only where a masked token is predicted,
        # on a budget per device's rows (a per-row budget would be twice as large)
        groups = batch_groups(ids.shape[0])
        budget = mntp.selection_budget(ids.size // groups, spec.rate)
        positions, valid = mntp.masked_positions(label_mask, budget, groups)
        logits = model.apply(
            variables, corrupted, batch["attention_mask"], mask="bidirectional", deterministic=False,
            rngs={"dropout": dropout_rng}, select=jnp.maximum(positions - 1, 0),
        )
        value, count = mntp.selected_loss(logits, ids, positions, valid)
        return value, {"masked_tokens": count}

    return _no_params, loss


def make_contrastive(
    model: Decoder, spec: ContrastiveSpec, masking: MaskingSpec, mask_token_id: int, special_ids: tuple[int, ...]
):
    vocab = model.config.vocab_size

    def loss(variables, _, batch, rng):
        view_rng, dropout_rng = jax.random.split(rng)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # both views in one forward pass of twice the batch: larger matmuls, and
        # dropout (or masking) still differs between the two copies of a row
        ids, mask = jnp.concatenate([ids, ids]), jnp.concatenate([mask, mask])
        if spec.views == "masking":
            ids, _ = mntp.mask_tokens(
                view_rng, ids, mask, rate=masking.rate, mask_token_id=mask_token_id,
                vocab_size=vocab, special_ids=special_ids,
            )
        states = _apply(model, variables, ids, mask, "bidirectional", "hidden", dropout_rng)
        if "item_row" in batch:  # packed: a row of width w holds at most w items
            pooled = segment_mean_pool(states, mask, mask.shape[1])
            rows, segments = batch["item_row"], batch["item_segment"]
            a, b = pooled[rows, segments], pooled[rows + len(batch["input_ids"]), segments]
        else:
            a, b = jnp.split(mean_pool(states, mask), 2)
        return contrastive.info_nce(a, b, spec.temperature, spec.symmetric), {}

    return _no_params, loss


def make_scft(model: Decoder, spec: ScftSpec):
    def init_params(rng):
        return {"tau": jnp.asarray(scft.TAU_INIT, jnp.float32)}

    def embed(variables, batch, view, rng):
        ids, mask = batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"]
        return mean_pool(_apply(model, variables, ids, mask, spec.mask, "hidden", rng), mask)

    def loss(variables, params, batch, rng):
        rng_a, rng_b = jax.random.split(rng)
        x, y = embed(variables, batch, "view_a", rng_a), embed(variables, batch, "view_b", rng_b)
        return scft.soft_clip_loss(x, y, params["tau"], spec.normalize), {"tau": params["tau"]}

    return init_params, loss
