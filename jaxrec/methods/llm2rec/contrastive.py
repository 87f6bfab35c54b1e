"""Item-level contrastive learning (LLM2Rec step 2b, SimCSE style): two views
of each item's title, pooled by the mean over its tokens under bidirectional
attention; InfoNCE over cosine similarity / temperature, row i of one view
against every row of the other, with the other items of the global batch as
negatives.

The two views come from two dropout passes (the authors') or two token
maskings. Batch: one row per title, as MNTP's (padded or packed); packed
batches add ``item_row`` / ``item_segment`` [items] locating each title.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jaxrec.errors import ConfigError
from jaxrec.methods.llm2rec.mntp import MaskingSpec, TitleExamples, mask_tokens
from jaxrec.models.decoder import Decoder
from jaxrec.models.pooling import mean_pool, segment_mean_pool
from jaxrec.objectives.similarity import l2_normalize
from jaxrec.tasks.lm_training import apply_decoder, lm_task, no_params
from jaxrec.tasks.specs import LMTrainingConfig


@dataclasses.dataclass
class ContrastiveSpec:
    temperature: float = 0.1
    views: Literal["dropout", "masking"] = "dropout"
    symmetric: bool = False

    def __post_init__(self):
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0 (it divides the similarities), got {self.temperature}")


@dataclasses.dataclass
class ContrastiveConfig(LMTrainingConfig):
    task: str = "contrastive"
    masking: MaskingSpec = dataclasses.field(default_factory=MaskingSpec)
    contrastive: ContrastiveSpec = dataclasses.field(default_factory=ContrastiveSpec)


def info_nce(a: jax.Array, b: jax.Array, temperature: float, symmetric: bool = False) -> jax.Array:
    logits = l2_normalize(a) @ l2_normalize(b).T / temperature
    labels = jnp.arange(a.shape[0])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    if symmetric:
        loss = 0.5 * (loss + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
    return loss


def make_loss(model: Decoder, spec: ContrastiveSpec, masking: MaskingSpec, mask_token_id: int,
              special_ids: tuple[int, ...]):
    """``(init_params, loss)`` of the contrastive objective on ``model`` (see
    :class:`~jaxrec.tasks.lm_training.Objective`)."""
    vocab = model.config.vocab_size

    def loss(variables, _, batch, rng):
        view_rng, dropout_rng = jax.random.split(rng)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        # both views in one forward pass of twice the batch: larger matmuls, and
        # dropout (or masking) still differs between the two copies of a row
        ids, mask = jnp.concatenate([ids, ids]), jnp.concatenate([mask, mask])
        if spec.views == "masking":
            ids, _ = mask_tokens(view_rng, ids, mask, rate=masking.rate, mask_token_id=mask_token_id,
                                 vocab_size=vocab, special_ids=special_ids)
        states = apply_decoder(model, variables, ids, mask, "bidirectional", "hidden", dropout_rng)
        if "item_row" in batch:  # packed: a row of width w holds at most w items
            pooled = segment_mean_pool(states, mask, mask.shape[1])
            rows, segments = batch["item_row"], batch["item_segment"]
            a, b = pooled[rows, segments], pooled[rows + len(batch["input_ids"]), segments]
        else:
            a, b = jnp.split(mean_pool(states, mask), 2)
        return info_nce(a, b, spec.temperature, spec.symmetric), {}

    return no_params, loss


class Contrastive(TitleExamples):
    def loss(self, model):
        spec = self.config.contrastive
        if spec.views == "dropout" and not model.config.attention_dropout:
            raise ConfigError(
                "contrastive.views=dropout needs dropout to differ between the two views: "
                "set model.attention_dropout (LLM2Rec uses 0.2) or contrastive.views=masking"
            )
        return make_loss(model, spec, self.config.masking, self.mask_id, self.specials)


TASK = lm_task("contrastive", ContrastiveConfig, Contrastive,
               "item-level contrastive learning on titles (LLM2Rec step 2b)")
