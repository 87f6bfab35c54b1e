"""Length bucketing: batches of similar lengths padded to a few fixed shapes,
so a jitted function compiles once per bucket instead of once per batch."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def bucket_length(length: int, minimum: int = 8) -> int:
    """Smallest bucket >= ``length`` among minimum, 2*minimum, then powers of two
    and 1.5x powers of two (8, 16, 24, 32, 48, 64, 96, ...): at most a third of
    a padded row is padding, and lengths up to 4096 need about 20 shapes."""
    size = minimum
    while size < length:
        if size < 2 * minimum:
            size = 2 * minimum
        elif size & (size - 1) == 0:
            size += size // 2
        else:
            size = 1 << size.bit_length()
    return size


@dataclasses.dataclass(frozen=True)
class Batch:
    """Rows ``indices`` of the input, padded to ``length``; the batch is filled
    with dummy rows up to the fixed batch size."""

    indices: np.ndarray
    length: int


def plan_batches(lengths: Sequence[int], batch_size: int, minimum: int = 8) -> list[Batch]:
    """Sort rows by length (stable) and cut them into batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    return [
        Batch(chunk, bucket_length(int(lengths[chunk].max()), minimum))
        for chunk in np.array_split(order, range(batch_size, len(order), batch_size))
        if len(chunk)
    ]


def pad_sequences(
    sequences: Sequence[Sequence[int]], length: int, pad_id: int, side: str = "right", rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values and mask, both int32 [rows, length] (rows defaults to one per
    sequence; extra rows are all padding). Sequences longer than ``length``
    keep their first tokens (right padding) or their last (left padding)."""
    values = np.full((rows or len(sequences), length), pad_id, np.int32)
    mask = np.zeros_like(values)
    for row, seq in enumerate(sequences):
        seq = seq[-length:] if side == "left" else seq[:length]
        span = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        values[row, span], mask[row, span] = seq, 1
    return values, mask


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """Where each sequence sits in packed rows of ``width`` tokens: its
    ``row``, its ``segment`` within the row (0-based) and its ``offset``."""

    row: np.ndarray
    segment: np.ndarray
    offset: np.ndarray
    rows: int
    width: int
    max_segments: int
    """The most sequences any row holds."""
    by_row: np.ndarray
    """Sequence indices in the order they were placed (their rows ascending)."""
    row_starts: np.ndarray
    """[rows + 1]: where each row's sequences begin in ``by_row``."""

    def members(self, first: int, stop: int) -> np.ndarray:
        """Indices of the sequences in rows ``first`` .. ``stop - 1``."""
        return self.by_row[self.row_starts[min(first, self.rows)] : self.row_starts[min(stop, self.rows)]]


def pad_batch(sequences: list[list[int]], pad_id: int, max_length: int, side: str = "right") -> dict[str, np.ndarray]:
    """Ids and attention mask padded to the batch's length bucket (capped at
    ``max_length``), so training compiles once per bucket, not per batch."""
    length = min(bucket_length(max(len(s) for s in sequences)), max_length)
    ids, mask = pad_sequences(sequences, length, pad_id, side)
    return {"input_ids": ids, "attention_mask": mask}


def pack_layout(lengths: Sequence[int], width: int, max_segments: int | None = None) -> PackedLayout:
    """Next-fit over the sequences, longest first: each goes into the current
    row if it fits (and the row holds fewer than ``max_segments``), else
    starts a new one. Linear in the number of sequences; with sequences sorted
    by length a row wastes less than its last sequence's length."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.max() > width:
        raise ValueError(f"a sequence of {lengths.max()} tokens does not fit packed rows of width {width}")
    limit = max_segments or width
    row, segment, offset = (np.zeros(len(lengths), np.int64) for _ in range(3))
    current, used, count = 0, 0, 0
    order = np.argsort(-lengths, kind="stable")
    for index in order:
        size = int(lengths[index])
        if used + size > width or count == limit:
            current, used, count = current + 1, 0, 0
        row[index], segment[index], offset[index] = current, count, used
        used, count = used + size, count + 1
    rows = current + 1 if len(lengths) else 0
    most = int(np.bincount(row).max()) if len(lengths) else 0
    starts = np.searchsorted(row[order], np.arange(rows + 1))
    return PackedLayout(row, segment, offset, rows, width, most, order, starts)


def fill_packed_rows(sequences: Sequence[Sequence[int]], layout: PackedLayout, first: int, count: int,
                     pad_id: int, aligned: dict[str, Sequence[Sequence[int]]] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``input_ids``, the segment-id mask [count, width] holding packed rows
    ``first`` .. ``first + count - 1`` (rows past the layout are padding), and
    the ``aligned`` values (name -> one sequence per input sequence, of its
    length) placed where their sequences go, 0 elsewhere."""
    ids = np.full((count, layout.width), pad_id, np.int32)
    segments = np.zeros((count, layout.width), np.int32)
    companions = {name: np.zeros((count, layout.width), np.int32) for name in aligned or {}}
    for index in layout.members(first, first + count):
        r, start, seq = int(layout.row[index]) - first, int(layout.offset[index]), sequences[index]
        span = slice(start, start + len(seq))
        ids[r, span] = seq
        segments[r, span] = layout.segment[index] + 1
        for name, values in companions.items():
            values[r, span] = aligned[name][index]
    return ids, segments, companions


def pack_sequences(
    sequences: Sequence[Sequence[int]], width: int, pad_id: int, max_segments: int, blocks: int = 1,
    aligned: dict[str, Sequence[Sequence[int]]] | None = None,
) -> dict[str, np.ndarray]:
    """Several short sequences per row instead of one padded row each (see
    :func:`pack_layout`). Returns ``input_ids`` and ``attention_mask`` [rows,
    width], the mask holding each token's segment id within its row (1, 2,
    ...; 0 for padding; see ``positions_from_mask``), and for every sequence
    its ``item_row`` and ``item_segment`` (0-based, for pooling).

    The sequences are split into ``blocks`` equal consecutive groups, one per
    device the batch is sharded over, and each group is packed into its own
    rows, all groups padded to the same count: every device gets its own
    sequences whole, and the arrangement depends only on the number of
    blocks, not on how many processes load them (see :func:`align_packed_blocks`).

    ``aligned`` maps names to per-token values of each sequence (such as
    CSFT's target flags), returned under those names packed into the same
    places as the ids, 0 elsewhere.
    """
    if len(sequences) % blocks:
        raise ValueError(f"{len(sequences)} sequences do not split into {blocks} equal blocks")
    size = len(sequences) // blocks
    aligned = aligned or {}
    cut = lambda values, b: values[b * size : (b + 1) * size]
    groups = [cut(sequences, b) for b in range(blocks)]
    layouts = [pack_layout([len(s) for s in group], width, max_segments) for group in groups]
    rows = max(layout.rows for layout in layouts)
    filled = [fill_packed_rows(group, layout, 0, rows, pad_id, {k: cut(v, b) for k, v in aligned.items()})
              for b, (group, layout) in enumerate(zip(groups, layouts))]
    return {"input_ids": np.concatenate([ids for ids, _, _ in filled]),
            "attention_mask": np.concatenate([segments for _, segments, _ in filled]),
            **{name: np.concatenate([extra[name] for _, _, extra in filled]) for name in aligned},
            "item_row": np.concatenate([b * rows + layout.row for b, layout in enumerate(layouts)]).astype(np.int32),
            "item_segment": np.concatenate([layout.segment for layout in layouts]).astype(np.int32)}


PER_TOKEN_KEYS = ("input_ids", "attention_mask", "target_mask")
"""The batch arrays with one row per (packed) row and one value per token."""


def is_packed(batch: dict) -> bool:
    return "item_row" in batch


def align_packed_blocks(batch: dict[str, np.ndarray], blocks: int, rows_per_block: int,
                        first_block: int) -> dict[str, np.ndarray]:
    """A process's packed batch (``blocks`` blocks of equal rows, from
    :func:`pack_sequences`) as its part of a global batch: each block padded
    to ``rows_per_block`` rows, the count every process agreed on, and
    ``item_row`` counted in global rows, this process's blocks starting at
    block ``first_block``."""
    have = len(batch["input_ids"]) // blocks
    if have > rows_per_block:
        raise ValueError(f"packed blocks of {have} rows do not fit the agreed {rows_per_block}")
    pad = ((0, 0), (0, rows_per_block - have), (0, 0))
    # the added rows are all segment 0 (padding), which neither attention nor any loss reads
    rows = {key: np.pad(batch[key].reshape(blocks, have, -1), pad).reshape(blocks * rows_per_block, -1)
            for key in PER_TOKEN_KEYS if key in batch}
    block, row = np.divmod(batch["item_row"], have)
    return {**batch, **rows, "item_row": ((first_block + block) * rows_per_block + row).astype(np.int32)}


def pad_trailing_axes(batch: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Each array zero-padded at the end of every axis but the first (rows) to
    ``shapes[key]``. Zero is padding in every batch array: attention mask and
    segment 0, target and valid flags 0, and ids under a zero mask are never read."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        pad = [(0, 0)] + [(0, want - have) for have, want in zip(value.shape[1:], shapes[key])]
        if any(after < 0 for _, after in pad):
            raise ValueError(f"{key} of shape {value.shape} is wider than the agreed {shapes[key]}")
        out[key] = np.pad(value, pad) if any(after for _, after in pad) else value
    return out

