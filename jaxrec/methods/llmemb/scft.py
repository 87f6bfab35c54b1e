"""SCFT (LLMEmb step 1): supervised contrastive fine-tuning on item attribute
prompts. Two views of each item's prompt, its attributes shuffled and a share
dropped independently, are mean-pooled by the LLM and pulled together by
:func:`~jaxrec.objectives.similarity.soft_clip_loss` with a learnable
temperature (initialised at 3).

Batch: ``view_a_input_ids``, ``view_a_attention_mask``, ``view_b_input_ids``,
``view_b_attention_mask`` [batch, length].
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.item_text import attribute_text, item_attributes
from jaxrec.models.decoder import Decoder
from jaxrec.models.pooling import mean_pool
from jaxrec.objectives.similarity import TAU_INIT, soft_clip_loss
from jaxrec.shapes import pad_batch
from jaxrec.tasks.lm_training import Objective, apply_decoder, lm_task
from jaxrec.tasks.specs import LMTrainingConfig


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


@dataclasses.dataclass
class ScftConfig(LMTrainingConfig):
    task: str = "scft"
    scft: ScftSpec = dataclasses.field(default_factory=ScftSpec)


def attribute_view(attributes: dict, rng: np.random.Generator, drop: float, rounding: str = "floor") -> dict:
    """One SCFT augmentation: the attributes shuffled and a share ``drop`` of
    them removed, that count rounded down (the authors' code) or to the
    nearest ("round"); at least one kept."""
    keys = list(attributes)
    rng.shuffle(keys)
    dropped = int(np.floor(drop * len(keys))) if rounding == "floor" else int(round(drop * len(keys)))
    keep = max(1, len(keys) - dropped)
    return {k: attributes[k] for k in keys[:keep]}


def make_loss(model: Decoder, spec: ScftSpec):
    """``(init_params, loss)`` of SCFT on ``model``: its own parameter is the temperature ``tau``."""
    def init_params(rng):
        return {"tau": jnp.asarray(TAU_INIT, jnp.float32)}

    def embed(variables, batch, view, rng):
        ids, mask = batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"]
        return mean_pool(apply_decoder(model, variables, ids, mask, spec.mask, "hidden", rng), mask)

    def loss(variables, params, batch, rng):
        rng_a, rng_b = jax.random.split(rng)
        x, y = embed(variables, batch, "view_a", rng_a), embed(variables, batch, "view_b", rng_b)
        return soft_clip_loss(x, y, params["tau"], spec.normalize), {"tau": params["tau"]}

    return init_params, loss


class Scft(Objective):
    """Two attribute-prompt views of each item, attributes shuffled and dropped
    independently; drawn once per item (seeded by it) unless scft.views=per_epoch."""

    def __init__(self, config, lm, data, blocks=1):
        super().__init__(config, lm, data, blocks)
        warm = data.warm_items()
        self.items = item_attributes([data.titles[i] for i in warm], [data.attributes[i] for i in warm])
        self.count = len(self.items)

    def example(self, index, rng):
        if self.config.scft.views == "fixed":
            rng = np.random.default_rng([self.config.seed, 3, index])
        scft = self.config.scft
        return tuple(attribute_text(attribute_view(self.items[index], rng, self.spec.attribute_drop, scft.drop_rounding),
                                    self.spec.domain) for _ in range(2))

    def collate(self, examples):
        batch = {}
        for view, texts in zip(("view_a", "view_b"), zip(*examples)):
            ids = self.tokenize(list(texts))
            padded = pad_batch(ids, self.pad_id, self.spec.max_length)
            batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"] = padded["input_ids"], padded["attention_mask"]
        return batch

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Prompt ids within max_length: with scft.special_tokens=eos, no special tokens and EOS last."""
        if self.config.scft.special_tokens == "bos":
            return self.tok(texts, truncation=True, max_length=self.spec.max_length)["input_ids"]
        ids = self.tok(texts, add_special_tokens=False, truncation=True, max_length=self.spec.max_length - 1)["input_ids"]
        return [row + [self.tok.eos_token_id] for row in ids]

    def loss(self, model):
        return make_loss(model, self.config.scft)


TASK = lm_task("scft", ScftConfig, Scft, "supervised contrastive fine-tuning on attribute prompts (LLMEmb step 1)")
