"""Training batches through Grain.

``MapDataset.range(n)`` is shuffled with the run's seed (a new permutation each
epoch) before it is split across processes, so every process sees the same
global order; each takes its contiguous block of every global batch, so the
processes' local batches are disjoint, their union is the global batch, and
the assembled global array equals the single-process one row for row. Per-example
randomness (augmented views) comes from Grain's seeded ``random_map``, and the
iterator's state is a small dict saved with the checkpoint, so a resumed run
continues with exactly the batch an uninterrupted run would have produced.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import grain
import numpy as np


class GrainBatches:
    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        example: Callable[[int, np.random.Generator], Any],
        collate: Callable[[Sequence[Any]], dict[str, np.ndarray]],
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        epochs: int | None = None,
        workers: int = 0,
    ):
        if global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} does not split over {process_count} processes")
        if num_examples < global_batch_size:
            raise ValueError(f"{num_examples} examples cannot fill one global batch of {global_batch_size}")
        stream = grain.MapDataset.range(num_examples).shuffle(seed=seed).repeat(epochs)
        # random draws are keyed by the global position, so they do not depend on the process layout
        stream = stream.random_map(lambda index, rng: example(int(index), rng), seed=seed)
        local = global_batch_size // process_count
        offset = process_index * local
        steps = len(stream) // global_batch_size
        # this process's rows are a contiguous block of every global batch, so the
        # assembled global array has the same row order as a single-process run
        dataset = grain.MapDataset.range(steps * local).map(
            lambda j: stream[(j // local) * global_batch_size + offset + j % local]
        )
        dataset = dataset.batch(local, drop_remainder=True, batch_fn=collate)
        iterable = dataset.to_iter_dataset()
        if workers:
            _abseil_flags_parsed()
            iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
        self._iterator = iter(iterable)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state)

    def close(self) -> None:
        """Stop prefetch workers now rather than at interpreter exit."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _abseil_flags_parsed() -> None:
    """Grain <= 0.2.18 reads an Abseil flag in mp_prefetch and fails in programs
    that never parse flags (google/grain#1355); declare them parsed, keeping
    every flag at its default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
