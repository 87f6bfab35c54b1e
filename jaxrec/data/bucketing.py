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
