"""One generic train step, jitted once over a mesh.

``loss_fn(trainable, frozen, batch, rng) -> (loss, metrics)`` is all an
objective provides. The step differentiates only the trainable partition, so
gradients and optimizer state exist only for it. The per-step RNG is the run's
base key folded with the step number: a resumed run draws the same dropout and
masks as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    trainable: Any
    opt_state: Any


def init_state(trainable, optimizer: optax.GradientTransformation) -> TrainState:
    """Under jit, so optimizer moments come out sharded like the (already
    sharded) parameters they track, before the first step."""
    return jax.jit(
        lambda t: TrainState(step=jnp.zeros((), jnp.int32), trainable=t, opt_state=optimizer.init(t))
    )(trainable)


def shardings_of(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    def train_step(state: TrainState, frozen, batch: dict, base_rng: jax.Array):
        rng = jax.random.fold_in(base_rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable, frozen, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
        return TrainState(state.step + 1, trainable, opt_state), metrics

    return train_step


def make_eval_step(loss_fn: LossFn):
    def eval_step(state: TrainState, frozen, batch: dict, base_rng: jax.Array):
        loss, metrics = loss_fn(state.trainable, frozen, batch, base_rng)
        return {**metrics, "loss": loss}

    return eval_step


def jit_train_step(train_step, state_sharding, frozen_sharding, batch_sharding, mesh):
    """Explicit in/out shardings and a donated state: compiled once for a fixed batch shape."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, frozen_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
