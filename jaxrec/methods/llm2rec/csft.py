"""CSFT (LLM2Rec step 1): causal LM fine-tuning on users' title sequences,
the loss on the next title's tokens only.

An example is one position of a user's training sequence: the titles before
it (at most ``batch.max_history``), then the target title, a newline and EOS.
Batch: ``input_ids`` and ``attention_mask`` [batch, length] (left-padded, or
packed rows whose mask holds segment ids), ``target_mask`` = 1 on the tokens
to predict, and ``target_rows`` / ``target_columns`` / ``target_valid``
[groups, budget]: where those tokens are, so that the vocabulary projection
runs at those positions only. The logit at position t-1 predicts the token at t.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models.decoder import Decoder
from jaxrec.objectives.tokens import next_token_loss, selected_loss
from jaxrec.shapes import bucket_length, pack_sequences, pad_batch, pad_sequences
from jaxrec.tasks.lm_training import Objective, apply_decoder, lm_task, no_params
from jaxrec.tasks.specs import LMTrainingConfig


@dataclasses.dataclass
class CsftConfig(LMTrainingConfig):
    task: str = "csft"


def csft_targets(sequences: list[list[int]], holdout: int = 2) -> np.ndarray:
    """(user, position) pairs whose item is a CSFT target: every position but
    the first of each user's training prefix (the last ``holdout`` items are
    validation and test targets and never appear)."""
    pairs = [(u, t) for u, seq in enumerate(sequences) for t in range(1, len(seq) - holdout)]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def csft_example(tokenizer, history: list[str], target: str, max_length: int,
                 separator: str = "") -> tuple[list[int], list[int]]:
    """History titles joined with ", ", ``separator``, then the target title, a
    newline and EOS (the history's tokens and the target's are tokenized apart
    and concatenated, as the authors' code does); the history is cut from the
    left to fit ``max_length``. Returns (ids, target mask)."""
    target_ids = tokenizer(target + "\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    history_ids = tokenizer(", ".join(history) + separator, add_special_tokens=False)["input_ids"]
    room = max(max_length - len(target_ids), 0)
    history_ids = history_ids[len(history_ids) - room :] if room else []
    ids = (history_ids + target_ids)[-max_length:]
    return ids, ([0] * len(history_ids) + [1] * len(target_ids))[-max_length:]


def target_positions(target_mask: np.ndarray, attention_mask: np.ndarray,
                     groups: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the target tokens are, per group of rows (``groups`` equal blocks
    of consecutive rows, one per device the batch is split over): ``rows``
    (within the group), ``columns`` and ``valid``, each [groups, budget],
    targets first in order and the rest valid = 0. The budget is the fullest
    group's count rounded up to a length bucket, so that batches share a few
    shapes and the vocabulary projection runs on about as many positions as
    the batch has targets. A target that starts its sequence (padded or
    packed) has no logit before it and is not counted, as in
    :func:`~jaxrec.objectives.tokens.next_token_loss`."""
    segments = np.asarray(attention_mask)
    starts = segments > 0
    starts[:, 1:] &= segments[:, 1:] != segments[:, :-1]
    wanted = np.asarray(target_mask).astype(bool) & ~starts
    width = wanted.shape[1]
    flat = wanted.reshape(groups, -1)
    budget = min(bucket_length(max(int(flat.sum(axis=1).max()), 1)), flat.shape[1])
    order = np.argsort(~flat, axis=1, kind="stable")[:, :budget]
    valid = np.take_along_axis(flat, order, axis=1)
    order = np.where(valid, order, 0)
    return (order // width).astype(np.int32), (order % width).astype(np.int32), valid.astype(np.int32)


def flat_positions(rows: jax.Array, columns: jax.Array, length: int) -> jax.Array:
    """:func:`target_positions` as positions through each group's rows (see
    ``Decoder``'s ``select``), for rows of ``length`` tokens."""
    return rows * length + columns


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, max_length: int, pack: bool = False,
            blocks: int = 1) -> dict[str, np.ndarray]:
    """A CSFT batch from (ids, target mask) examples: left-padded rows (one
    length bucket per batch), or rows of ``max_length`` packed with several
    examples each (``blocks``: the devices the batch is split over, each
    packed on its own), with the target positions per device's rows."""
    ids, targets = zip(*examples)
    if pack:  # the target flags packed into the same places as the ids
        batch = pack_sequences(list(ids), max_length, pad_id, max_length, blocks, aligned={"target_mask": targets})
    else:
        batch = pad_batch(list(ids), pad_id, max_length, side="left")
        batch["target_mask"], _ = pad_sequences(targets, batch["input_ids"].shape[1], 0, side="left")
    rows, columns, valid = target_positions(batch["target_mask"], batch["attention_mask"], blocks)
    return {**batch, "target_rows": rows, "target_columns": columns, "target_valid": valid}


def make_loss(model: Decoder):
    """``(init_params, loss)`` of CSFT on ``model`` (see :class:`~jaxrec.tasks.lm_training.Objective`)."""
    def loss(variables, _, batch, rng):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if "target_rows" not in batch:
            logits = apply_decoder(model, variables, ids, mask, "causal", "logits", rng)
            value, count = next_token_loss(logits, ids, batch["target_mask"])
            return value, {"tokens": count}
        # the vocabulary projection runs only where a target token is predicted
        positions = flat_positions(batch["target_rows"], batch["target_columns"], ids.shape[1])
        logits = apply_decoder(model, variables, ids, mask, "causal", "logits", rng,
                               select=jnp.maximum(positions - 1, 0))
        value, count = selected_loss(logits, ids, positions, batch["target_valid"])
        return value, {"tokens": count}

    return no_params, loss


class Csft(Objective):
    """Next-title generation: each position of a user's training sequence is
    the target of the titles before it (left-padded)."""

    packable = True

    def __init__(self, config, lm, data, blocks=1):
        super().__init__(config, lm, data, blocks)
        self.sequences = [[data.titles[i] for i in data.sequence(u)] for u in range(data.num_users)]
        self.pairs = csft_targets(self.sequences)
        self.count = len(self.pairs)

    def example(self, index, rng):
        user, position = self.pairs[index]
        return self._example(int(user), int(position))

    def _example(self, user: int, position: int):
        history = self.sequences[user][max(0, position - self.spec.max_history) : position]
        return csft_example(self.tok, history, self.sequences[user][position], self.spec.max_length,
                            self.spec.csft_separator)

    def collate(self, examples):
        return collate(examples, self.pad_id, self.spec.max_length, self.spec.pack, self.blocks)

    def validation_examples(self):
        """Each of the first users' second-to-last item, from the titles before it."""
        users = (u for u, s in enumerate(self.sequences) if len(s) >= 3)
        return [self._example(u, len(self.sequences[u]) - 2)
                for u in itertools.islice(users, self.spec.size * self.spec.eval_batches)]

    def loss(self, model):
        return make_loss(model)


TASK = lm_task("csft", CsftConfig, Csft, "causal LM fine-tuning on users' title sequences (LLM2Rec step 1)")
