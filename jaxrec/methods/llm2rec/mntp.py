"""MNTP (LLM2Rec step 2a): masked next-token prediction on item titles with
bidirectional attention.

A rate of the real tokens is chosen (special tokens, padding and the first
real token of each row, or of each sequence of a packed row, never: nothing
precedes it to predict it from). Of the chosen, 80% become the mask token, 10%
a random token and 10% stay unchanged. The logit at position i-1 predicts the
original token at i, which keeps the pretrained LM head meaningful.

An example is one item's title; batch: ``input_ids``, ``attention_mask``
[batch, length], padded rows or packed ones (several titles per row, the mask
holding segment ids). The masking happens inside the step.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxrec.errors import ConfigError
from jaxrec.models.decoder import Decoder
from jaxrec.models.layers import batch_groups, positions_from_mask
from jaxrec.models.lm import LM
from jaxrec.objectives.tokens import next_token_loss, selected_loss
from jaxrec.shapes import pack_sequences, pad_batch
from jaxrec.tasks.lm_training import Objective, apply_decoder, lm_task, no_params
from jaxrec.tasks.specs import LMTrainingConfig


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
class MntpConfig(LMTrainingConfig):
    task: str = "mntp"
    masking: MaskingSpec = dataclasses.field(default_factory=MaskingSpec)


def mask_tokens(
    rng: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    *,
    rate: float,
    mask_token_id: int,
    vocab_size: int,
    special_ids: tuple[int, ...] = (),
) -> tuple[jax.Array, jax.Array]:
    """Returns (corrupted input ids, label mask)."""
    real = attention_mask.astype(bool)
    eligible = real & (positions_from_mask(attention_mask) > 0) & ~jnp.isin(input_ids, jnp.asarray(special_ids, input_ids.dtype))
    choose_key, kind_key, random_key = jax.random.split(rng, 3)
    chosen = eligible & jax.random.bernoulli(choose_key, rate, input_ids.shape)
    kind = jax.random.uniform(kind_key, input_ids.shape)
    random_tokens = jax.random.randint(random_key, input_ids.shape, 0, vocab_size, input_ids.dtype)
    corrupted = jnp.where(kind < 0.8, mask_token_id, jnp.where(kind < 0.9, random_tokens, input_ids))
    return jnp.where(chosen, corrupted, input_ids), chosen


def masked_next_token_loss(logits: jax.Array, labels: jax.Array, label_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Loss of predicting ``labels`` at masked positions from the logit one to the left."""
    return next_token_loss(logits, labels, label_mask)


def selection_budget(positions: int, rate: float) -> int:
    """Masked positions kept among ``positions`` (a group of rows): the
    expected count plus four standard deviations, so a group almost never
    exceeds it (any excess is left out of the loss)."""
    mean = rate * positions
    return int(min(positions, math.ceil(mean + 4 * math.sqrt(mean * (1 - rate))) + 1))


def masked_positions(label_mask: jax.Array, budget: int, groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """The first ``budget`` masked positions of each of ``groups`` equal blocks
    of rows [groups, budget], counted through the block's rows (row * length +
    column), and which of those slots hold a real masked position."""
    flat = label_mask.reshape(groups, -1)
    order = jnp.argsort(~flat, axis=-1, stable=True)[:, :budget]
    return order, jnp.take_along_axis(flat, order, axis=-1)


def mask_token_id(lm: LM, masking: MaskingSpec, pad_id: int) -> int:
    """The id that replaces masked tokens: ``mask_token_id``, else the single
    token ``mask_token`` stands for, else the tokenizer's mask token, else ``pad_id``."""
    if masking.mask_token_id is not None:
        if not 0 <= masking.mask_token_id < lm.config.vocab_size:
            raise ConfigError(f"masking.mask_token_id {masking.mask_token_id} is outside the vocabulary "
                              f"(0..{lm.config.vocab_size - 1})")
        return masking.mask_token_id
    tok = lm.tokenizer
    if masking.mask_token is None:
        return int(tok.mask_token_id if tok.mask_token_id is not None else pad_id)
    ids = tok(masking.mask_token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tok.unk_token_id:
        raise ConfigError(f"masking.mask_token {masking.mask_token!r} is not one token of {lm.source}'s tokenizer "
                          f"(it encodes to {ids}); choose another mask_token, set masking.mask_token_id, or "
                          "masking.mask_token=null for the tokenizer's own mask / pad token")
    return int(ids[0])


def make_loss(model: Decoder, spec: MaskingSpec, mask_token_id: int, special_ids: tuple[int, ...]):
    """``(init_params, loss)`` of MNTP on ``model`` (see :class:`~jaxrec.tasks.lm_training.Objective`)."""
    vocab = model.config.vocab_size

    def loss(variables, _, batch, rng):
        mask_rng, dropout_rng = jax.random.split(rng)
        ids = batch["input_ids"]
        corrupted, label_mask = mask_tokens(
            mask_rng, ids, batch["attention_mask"], rate=spec.rate,
            mask_token_id=mask_token_id, vocab_size=vocab, special_ids=special_ids,
        )
        # the vocabulary projection runs only where a masked token is predicted,
        # on a budget per device's rows (a per-row budget would be twice as large)
        groups = batch_groups(ids.shape[0])
        budget = selection_budget(ids.size // groups, spec.rate)
        positions, valid = masked_positions(label_mask, budget, groups)
        logits = apply_decoder(model, variables, corrupted, batch["attention_mask"], "bidirectional", "logits",
                               dropout_rng, select=jnp.maximum(positions - 1, 0))
        value, count = selected_loss(logits, ids, positions, valid)
        return value, {"masked_tokens": count}

    return no_params, loss


class TitleExamples(Objective):
    """Objectives on item titles (mntp, contrastive): one example per title,
    in padded or packed rows."""

    packable = True

    def __init__(self, config, lm, data, blocks=1):
        super().__init__(config, lm, data, blocks)
        # held-out cold items' titles are never trained on
        self.titles = self.tok([data.titles[i] for i in data.warm_items()], add_special_tokens=True, truncation=True,
                               max_length=self.spec.max_length)["input_ids"]
        self.count = len(self.titles)
        self.specials = tuple(int(i) for i in self.tok.all_special_ids)
        self.mask_id = mask_token_id(lm, config.masking, self.pad_id)

    def example(self, index, rng):
        return self.titles[index]

    def collate(self, examples):
        if self.spec.pack:  # packed per device, each device's rows holding its own titles
            return pack_sequences(list(examples), self.spec.max_length, self.pad_id, self.spec.max_length,
                                  self.blocks)
        return pad_batch(list(examples), self.pad_id, self.spec.max_length)


class Mntp(TitleExamples):
    def loss(self, model):
        return make_loss(model, self.config.masking, self.mask_id, self.specials)


TASK = lm_task("mntp", MntpConfig, Mntp, "masked next-token prediction on item titles, bidirectional (LLM2Rec step 2a)")
