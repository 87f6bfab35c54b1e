"""Recommender examples as whole arrays, built vectorised from a ``SeqData``.

Histories are right-padded with 0 to a fixed length. Training only sees each
user's ``sequence[:-2]``; validation predicts ``sequence[-2]`` and test
``sequence[-1]`` from the items before it (leave-one-out).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from jaxrec.data.prep import SeqData
from jaxrec.eval.negatives import UserItems


@dataclasses.dataclass(frozen=True)
class Examples:
    history: np.ndarray  # [n, length] int32, right-padded
    targets: np.ndarray  # [n, length] int32; 0 where a position has no target
    users: np.ndarray  # [n] the user each example comes from

    def __len__(self) -> int:
        return len(self.history)


def _windows(items: np.ndarray, ends: np.ndarray, counts: np.ndarray, length: int) -> np.ndarray:
    """Rows ``items[end - count : end]`` right-padded to ``length``."""
    columns = np.arange(length)
    index = ends[:, None] - counts[:, None] + columns[None]
    real = columns[None] < counts[:, None]
    return np.where(real, items[np.clip(index, 0, len(items) - 1)], 0).astype(np.int32)


def _train_lengths(data: SeqData) -> np.ndarray:
    """Training items per user (all but the validation and test items)."""
    return np.maximum(np.diff(data.offsets) - 2, 0)


def _train_positions(data: SeqData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global positions of every training item, their index within the user's
    sequence, and their user."""
    lengths = _train_lengths(data)
    first_of_user = np.repeat(np.cumsum(lengths) - lengths, lengths)
    within = np.arange(lengths.sum()) - first_of_user
    starts = np.repeat(data.offsets[:-1], lengths)
    return starts + within, within, np.repeat(np.arange(data.num_users), lengths)


def _chunks(data: SeqData, length: int) -> Examples:
    """Each user's training items cut into consecutive chunks of ``length``
    histories whose targets are the next items, so every training item after
    a user's first is a target exactly once."""
    predicted = np.maximum(_train_lengths(data) - 1, 0)  # targets per user
    chunks = -(-predicted // length)
    user = np.repeat(np.arange(data.num_users), chunks)
    index = np.arange(chunks.sum()) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    counts = np.minimum(predicted[user] - index * length, length)
    ends = data.offsets[user] + index * length + counts  # one past each chunk's last history item
    return Examples(_windows(data.items, ends, counts, length), _windows(data.items, ends + 1, counts, length), user)


def training_examples(data: SeqData, length: int,
                      mode: Literal["prefixes", "sequences", "last", "chunks", "windows"]) -> Examples:
    """prefixes: one example per training item after a user's first, its
    target at the last real position; sequences: one example per user, the
    latest window of its training items with a target at every position
    (the next item); last: the sequences with a target at their last
    position only (LLMEmb's GRU4Rec); chunks: every user's training items in consecutive
    chunks, a target at every position, each training item a target once
    (a tenth of the prefixes' work for the same targets, with shorter
    histories on average); windows: each user's latest ``length`` training
    items, each its own target (BERT4Rec masks some and predicts them)."""
    if mode == "chunks":
        return _chunks(data, length)
    positions, within, of_user = _train_positions(data)
    if mode == "prefixes":
        keep = within >= 1
        positions, counts = positions[keep], np.minimum(within[keep], length)
        history = _windows(data.items, positions, counts, length)
        targets = np.zeros_like(history)
        targets[np.arange(len(history)), counts - 1] = data.items[positions]
        return Examples(history, targets, of_user[keep])
    train_lengths = _train_lengths(data)
    if mode == "windows":
        users = np.flatnonzero(train_lengths >= 1)
        ends = data.offsets[users] + train_lengths[users]
        history = _windows(data.items, ends, np.minimum(train_lengths[users], length), length)
        return Examples(history, history.copy(), users)
    users = np.flatnonzero(train_lengths >= 2)
    last = data.offsets[users] + train_lengths[users] - 1  # global position of each user's last training item
    counts = np.minimum(train_lengths[users] - 1, length)
    targets = _windows(data.items, last + 1, counts, length)
    if mode == "last":
        targets = np.where(np.arange(length)[None] == counts[:, None] - 1, targets, 0)
    return Examples(_windows(data.items, last, counts, length), targets, users)


HELD_OUT = {"train": 3, "valid": 2, "test": 1}
"""Where each part's target sits, counted from the end of a user's sequence
("train": the last training item, LLM-SRec's one example per user)."""


def evaluation_examples(data: SeqData, part: Literal["train", "valid", "test"], length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(history [users, length], target [users], full history length [users]) of every user."""
    lengths = np.diff(data.offsets)
    cut = np.maximum(lengths - HELD_OUT[part], 0)  # index of the target within each sequence
    ends = data.offsets[:-1] + cut
    counts = np.minimum(cut, length)
    return _windows(data.items, ends, counts, length), data.items[ends].astype(np.int32), cut


def training_user_items(data: SeqData) -> UserItems:
    """Each user's training items (all but the validation and test items), for
    training negatives that avoid what the user had consumed by training time
    and never use a held-out item (validation and test items of the user stay
    possible negatives, as in the authors' code: training must not read them)."""
    lengths = _train_lengths(data)
    positions, _, _ = _train_positions(data)
    return UserItems(np.concatenate([[0], np.cumsum(lengths)]), data.items[positions], data.num_items, data.cold)


def item_popularity(data: SeqData) -> np.ndarray:
    """[num_items + 1] interactions of each item in the training part."""
    positions, _, _ = _train_positions(data)
    return np.bincount(data.items[positions], minlength=data.num_items + 1)


def shuffle_histories(history: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's real (leading, non-zero) items randomly permuted; padding stays at the end."""
    keys = np.where(history > 0, rng.random(history.shape), np.inf)
    return np.take_along_axis(history, np.argsort(keys, axis=1, kind="stable"), axis=1)


def trimmed_width(history: np.ndarray, shortest: int = 8) -> int:
    """Columns a batch of right-padded histories needs: its longest row, rounded
    up to a power of two (at least ``shortest``), so a batch of short histories
    is not computed at the full ``max_history`` and only a few widths ever
    compile; the full width where that would keep more than half of it (a
    saving too small to pay for another compilation). Exact for every backbone:
    padding after a row's last item never reaches its states, and positions do
    not depend on it."""
    full = history.shape[1]
    longest = int(np.max(np.sum(history > 0, axis=1), initial=0))
    width = max(shortest, 1 << max(longest - 1, 0).bit_length())
    return width if 2 * width <= full else full


def trim_padding(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The batch with its per-position arrays (history, targets, negatives) cut to
    :func:`trimmed_width` columns; the rest as it is."""
    width = trimmed_width(batch["history"])
    per_position = ("history", "targets", "negatives")
    return {key: value[:, :width] if key in per_position else value for key, value in batch.items()}
