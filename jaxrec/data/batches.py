"""A deterministic, resumable batch iterator over a list of examples.

Batch ``k`` depends only on (seed, k): each epoch is a seeded permutation of
all examples, cut into global batches (remainder dropped), and each process
takes its contiguous slice of every global batch. ``make_batch(indices,
position)`` builds the arrays; random augmentations should seed from the
position so they repeat exactly on resume. The state is one integer,
saved with the checkpoint, so a resumed run continues with exactly the batch
an uninterrupted run would have produced.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class ShuffledBatches:
    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        make_batch: Callable[[np.ndarray, int], dict[str, np.ndarray]],
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise ValueError(f"global batch {global_batch_size} must divide over {process_count} processes")
        if num_examples < global_batch_size:
            raise ValueError(f"{num_examples} examples cannot fill one global batch of {global_batch_size}")
        self.num_examples, self.global_batch_size = num_examples, global_batch_size
        self.make_batch, self.seed = make_batch, seed
        self.local = global_batch_size // process_count
        self.offset = process_index * self.local
        self.batches_per_epoch = num_examples // global_batch_size
        self.position = 0

    def indices(self, position: int) -> np.ndarray:
        epoch, within = divmod(position, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
        start = within * self.global_batch_size + self.offset
        return order[start : start + self.local]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.make_batch(self.indices(self.position), self.position)
        self.position += 1
        return batch

    def get_state(self) -> dict:
        return {"position": self.position, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"iterator state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.position = int(state["position"])
