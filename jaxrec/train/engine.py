"""Assembles a training run's device state: shard the model's variables by
their logical axes, split them into trainable and frozen, add the objective's
own parameters, initialise the optimizer sharded, and jit the step once."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrec.models.decoder import Decoder, abstract_variables
from jaxrec.models.layers import LoraSpec
from jaxrec.shapes import align_packed_blocks, is_packed, pad_trailing_axes
from jaxrec.sharding import tree_shardings
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.partition import combine, split, trainable_patterns
from jaxrec.train.step import init_state, jit_train_step, make_eval_step, make_train_step, shardings_of


@dataclasses.dataclass
class TrainableSpec:
    mode: Literal["lora", "full", "subtrees"] = "lora"
    subtrees: list[str] = dataclasses.field(default_factory=list)
    """Regular expressions over variable paths (e.g. ``params/extra_embedding``) for mode 'subtrees'."""
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "q|k|v|o|gate|up|down"

    def __post_init__(self):
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")

    def lora_spec(self) -> LoraSpec | None:
        if self.mode != "lora":
            return None
        return LoraSpec(self.lora_rank, self.lora_alpha, self.lora_dropout, self.lora_targets)

    def patterns(self) -> tuple[str, ...]:
        return trainable_patterns(self.mode, self.subtrees)


def variable_shardings(model: Decoder, mesh: Mesh, rules: dict) -> dict:
    """Where each of the model's variables lives on the mesh, from its logical axes."""
    boxed = abstract_variables(model)
    return tree_shardings(nn.unbox(boxed), nn.get_partition_spec(boxed), mesh, rules)


def place_variables(model: Decoder, params: dict, mesh: Mesh, rules: dict, rng: jax.Array) -> dict:
    """The model's variables on the mesh: the given ``params`` moved to their
    shardings (nothing moves when they were loaded there), and every other
    collection (LoRA) freshly initialised sharded."""
    shardings = variable_shardings(model, mesh, rules)
    variables = {"params": jax.device_put(params, shardings["params"])}
    others = {k: v for k, v in shardings.items() if k != "params"}
    if others:
        init_others = lambda r: {
            k: v for k, v in nn.unbox(model.init(r, jnp.zeros((1, 1), jnp.int32))).items() if k != "params"
        }
        variables.update(jax.jit(init_others, out_shardings=others)(rng))
    return variables


class Engine:
    """Device state and compiled steps of one training run."""

    def __init__(
        self,
        model: Decoder,
        variables: dict,
        objective: tuple[Callable, Callable],
        patterns: tuple[str, ...],
        optimizer: optax.GradientTransformation,
        mesh: Mesh,
        seed: int = 0,
        batch_axes: tuple[str, ...] = ("data", "fsdp"),
    ):
        self.model, self.mesh, self.batch_axes = model, mesh, batch_axes
        init_objective, objective_loss = objective
        self.base_rng = jax.random.key(seed)
        replicated = NamedSharding(mesh, PartitionSpec())
        model_trainable, model_frozen = split(variables, patterns)
        objective_params = jax.device_put(init_objective(jax.random.fold_in(self.base_rng, 1)), replicated)
        self.frozen = {"model": model_frozen}

        def loss_fn(trainable, frozen, batch, rng):
            merged = combine(trainable["model"], frozen["model"])
            with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules([("batch", batch_axes)]):
                return objective_loss(merged, trainable["objective"], batch, rng)

        self.state = init_state({"model": model_trainable, "objective": objective_params}, optimizer)
        self.batch_sharding = NamedSharding(mesh, PartitionSpec(batch_axes or None))
        self.step_fn = jit_train_step(
            make_train_step(loss_fn, optimizer), shardings_of(self.state), shardings_of(self.frozen),
            self.batch_sharding, mesh,
        )
        self.eval_fn = jax.jit(make_eval_step(loss_fn), out_shardings=replicated)

    def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Assemble this process's rows into arrays sharded over the mesh."""
        if jax.process_count() > 1:
            local_batch = self._agree_across_processes(local_batch)
        return {
            key: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(value))
            for key, value in local_batch.items()
        }

    def _agree_across_processes(self, local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The shapes every process's part must share, from one small
        all-gather per batch: packed blocks padded to the row count of the
        fullest block of any process (item rows renumbered globally), and every
        array padded to the widest any process has (each pads its rows to its
        own length bucket)."""
        from jax.experimental import multihost_utils

        block, local_blocks = self._process_blocks
        packed = is_packed(local_batch)
        keys = sorted(local_batch)
        local = [len(local_batch["input_ids"]) // local_blocks if packed else 0]
        local += [d for key in keys for d in np.shape(local_batch[key])[1:]]
        agreed = np.max(multihost_utils.process_allgather(np.asarray(local, np.int32)), axis=0).tolist()
        if packed:
            local_batch = align_packed_blocks(local_batch, local_blocks, agreed[0], block * local_blocks)
        shapes, start = {}, 1
        for key in keys:
            end = start + np.ndim(local_batch[key]) - 1
            shapes[key], start = tuple(agreed[start:end]), end
        return pad_trailing_axes(local_batch, shapes)

    @functools.cached_property
    def _process_blocks(self) -> tuple[int, int]:
        """(this process's block of every batch, the devices that block is sharded over)."""
        return (mesh_lib.process_batch_block(self.mesh, self.batch_axes)[0],
                mesh_lib.local_batch_devices(self.mesh, self.batch_axes))

    def train_step(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        self.state, metrics = self.step_fn(self.state, self.frozen, self.global_batch(local_batch), self.base_rng)
        return metrics

    def evaluate(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return self.eval_fn(self.state, self.frozen, self.global_batch(local_batch), self.base_rng)

    def variables(self) -> dict:
        """The model's full variables (trainable merged back into frozen)."""
        return combine(self.state.trainable["model"], self.frozen["model"])
