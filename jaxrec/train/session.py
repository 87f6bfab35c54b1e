"""One way to set up and run training, shared by every training task and the
training benchmark: the mesh and its logical rules, variables placed by their
axis names, the optimizer from the loop's length, the engine, the loop, and
the best validation state restored at the end."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxrec.sharding import batch_devices
from jaxrec.train import mesh as mesh_lib
from jaxrec.models.decoder import Decoder
from jaxrec.train.engine import Engine, place_variables, variable_shardings
from jaxrec.train.hooks import restore_best
from jaxrec.train.loop import LoopSpec, attention_mask_tokens, train
from jaxrec.train.optim import OptimizerSpec, make_optimizer


@dataclasses.dataclass
class TrainResult:
    engine: Engine
    summary: dict
    best_step: int | None
    """The step of the restored best validation state (None: the last state is kept)."""


class TrainingSession:
    def __init__(self, mesh_spec: mesh_lib.MeshSpec, optimizer: OptimizerSpec, loop: LoopSpec, seed: int = 0,
                 devices=None):
        self.mesh = mesh_lib.make_mesh(mesh_spec, devices)
        self.rules = mesh_lib.rules_of(mesh_spec)
        self.optimizer_spec, self.loop, self.seed = optimizer, loop, seed

    @property
    def batch_axes(self) -> tuple[str, ...]:
        return tuple(self.rules.get("batch", ()))

    @property
    def batch_rows(self) -> int:
        """Devices a global batch is split over: row counts must be a multiple of it."""
        return batch_devices(self.mesh, self.batch_axes)

    @functools.cached_property
    def batch_block(self) -> tuple[int, int]:
        """(block, blocks) of every global batch this process loads (see ``mesh.process_batch_block``):
        what the data loaders take as their process index and count."""
        return mesh_lib.process_batch_block(self.mesh, self.batch_axes)

    @property
    def local_batch_rows(self) -> int:
        """Devices this process's part of a batch is split over (packed rows are packed per device)."""
        return mesh_lib.local_batch_devices(self.mesh, self.batch_axes)

    def place(self, model, params: dict, rng: jax.Array | None = None) -> dict:
        """A decoder's variables sharded by their logical axes (other collections initialised)."""
        rng = jax.random.key(self.seed) if rng is None else rng
        return place_variables(model, params, self.mesh, self.rules, rng)

    def param_shardings(self, config) -> dict:
        """The shardings of a decoder's params on this mesh: pass as ``load_lm(shardings=...)``
        so that the weights are read straight into their shards."""
        return variable_shardings(Decoder(config), self.mesh, self.rules)["params"]

    def replicate(self, tree):
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        return make_optimizer(self.optimizer_spec, self.loop.in_steps(steps_per_epoch).steps)

    def engine(self, model, variables: dict, objective, patterns, steps_per_epoch: int) -> Engine:
        return Engine(model, variables, objective, tuple(patterns), self.optimizer(steps_per_epoch), self.mesh,
                      self.seed, batch_axes=self.batch_axes)

    def fit(self, engine: Engine, batches, run_dir: str | Path, identity: dict,
            validate: Callable[[], dict] | None = None, log=print,
            count_tokens: Callable[[dict], int] = attention_mask_tokens) -> TrainResult:
        """Train (resuming the run's checkpoints), then restore the best validation state if one was kept."""
        summary = train(engine, batches, self.loop, run_dir, identity, validate=validate, log=log,
                        count_tokens=count_tokens)
        best_step = restore_best(engine, run_dir, identity)
        return TrainResult(engine, summary, best_step)


def trainable_count(engine: Engine) -> int:
    return sum(x.size for x in jax.tree.leaves(engine.state.trainable))


def gather(tree) -> dict:
    """Arrays of every process as host numpy arrays (collective: every process calls it)."""
    from jax.experimental import multihost_utils

    def host(x):
        return np.asarray(x) if x.is_fully_addressable else np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(host, tree)
