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


class _Batches:
    """Iteration, checkpointable state and shutdown shared by both batchers."""

    _iterator: Any

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


def _steps_per_epoch(num_examples: int, global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not split over {process_count} processes")
    if num_examples < global_batch_size:
        raise ValueError(f"{num_examples} examples cannot fill one global batch of {global_batch_size}")
    return num_examples // global_batch_size


def _iterate(dataset: grain.MapDataset, workers: int):
    iterable = dataset.to_iter_dataset()
    if workers:
        _abseil_flags_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return iter(iterable)


class GrainBatches(_Batches):
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
        self.steps_per_epoch = _steps_per_epoch(num_examples, global_batch_size, process_count)
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
        self._iterator = _iterate(dataset, workers)


class IndexBatches(_Batches):
    """Batches built from whole index arrays, for examples that are rows of
    precomputed arrays (recommender histories): ``collate(indices, rng)`` gets
    this process's int64 indices of one global batch and gathers them
    vectorised, so there is no per-example Python work; ``rng`` is seeded by
    (seed, step, process), for random parts of a batch (sampled negatives)
    that a resumed run draws again identically. Each epoch is a fresh seeded
    permutation; batches run on across epoch boundaries, and the row layout
    over processes is the same as ``GrainBatches``'. With ``with_replacement``
    every global batch is instead drawn uniformly with replacement, seeded by
    (seed, step) (the sampler of the authors' SASRec); an epoch is then just
    ``num_examples // global_batch_size`` steps."""

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        collate: Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]],
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 0,
        with_replacement: bool = False,
    ):
        self.steps_per_epoch = _steps_per_epoch(num_examples, global_batch_size, process_count)
        local = global_batch_size // process_count
        order = _EpochOrder(num_examples, seed)

        def indices(step: int) -> np.ndarray:
            if with_replacement:  # the whole global batch, so every process draws the same one
                drawn = np.random.default_rng([seed, step, 1]).integers(0, num_examples, global_batch_size)
                return drawn[process_index * local : (process_index + 1) * local]
            return order(step * global_batch_size + process_index * local + np.arange(local))

        def batch(step: int) -> dict[str, np.ndarray]:
            return collate(indices(step), np.random.default_rng([seed, step, process_index]))

        # an iterator over the steps of ~forever (2**62 steps), indexed lazily
        self._iterator = _iterate(grain.MapDataset.range(1 << 62).map(batch), workers)


class _EpochOrder:
    """Stream position -> example index: epoch e is ``permutation(n)`` seeded by (seed, e)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._cache = n, seed, {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 1:  # a batch spans at most two epochs
                self._cache.pop(min(self._cache))
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._cache[epoch]

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, within = np.divmod(positions, self.n)
        out = np.empty(len(positions), np.int64)
        for epoch in np.unique(epochs):
            rows = epochs == epoch
            out[rows] = self.permutation(int(epoch))[within[rows]]
        return out


def _abseil_flags_parsed() -> None:
    """Grain <= 0.2.18 reads an Abseil flag in mp_prefetch and fails in programs
    that never parse flags (google/grain#1355); declare them parsed, keeping
    every flag at its default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
