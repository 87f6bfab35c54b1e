"""LLM-SRec: retrieval + distillation + uniformity.

- ``user`` [batch, dim]: f_user of the LLM's [UserOut] state;
- ``items`` [batch, 1 + negatives, dim]: f_item of [ItemOut] states, the
  target first;
- ``teacher`` [batch, dim]: f_CF-user of the frozen SASRec user vector.

retrieval: softmax cross-entropy of user . item over the target and its
negatives. distillation: squared error between the L2-normalised user and
teacher vectors, averaged over every element (the authors' ``MSELoss``;
``reduction="sum"`` sums over the dimensions instead, ``dim`` times larger).
uniformity: over pairs of distinct rows of the normalised vectors, the mean of
exp(-2 ||z_a - z_b||^2) (the authors' code), or its log (``log=True``, the
usual definition); the loss applies it to the user side and the teacher side.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxrec.objectives.similarity import l2_normalize

REDUCTIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class DistillWeights:
    retrieval: float = 1.0
    distillation: float = 1.0
    uniformity: float = 1.0
    reduction: str = "mean"
    """Distillation's squared error: "mean" over all elements, or "sum" over the dimensions (mean over users)."""
    log_uniformity: bool = False


def retrieval_loss(user: jax.Array, items: jax.Array) -> jax.Array:
    scores = jnp.einsum("bd,bnd->bn", user.astype(jnp.float32), items.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(scores, jnp.zeros(scores.shape[0], jnp.int32)).mean()


def distillation_loss(user: jax.Array, teacher: jax.Array, reduction: str = "mean") -> jax.Array:
    squared = jnp.square(l2_normalize(user) - l2_normalize(teacher))
    return jnp.mean(jnp.sum(squared, axis=-1)) if reduction == "sum" else jnp.mean(squared)


def uniformity_loss(z: jax.Array, log: bool = False) -> jax.Array:
    z = l2_normalize(z)
    sq_dist = jnp.sum(jnp.square(z[:, None, :] - z[None, :, :]), axis=-1)
    n = z.shape[0]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    mean_kernel = jnp.sum(jnp.where(off_diagonal, jnp.exp(-2.0 * sq_dist), 0.0)) / max(n * (n - 1), 1)
    return jnp.log(mean_kernel) if log else mean_kernel


def sequence_distillation_loss(user: jax.Array, items: jax.Array, teacher: jax.Array,
                               weights: DistillWeights = DistillWeights()) -> tuple[jax.Array, dict[str, jax.Array]]:
    parts = {
        "retrieval": retrieval_loss(user, items),
        "distillation": distillation_loss(user, teacher, weights.reduction),
        "uniformity": uniformity_loss(user, weights.log_uniformity) + uniformity_loss(teacher, weights.log_uniformity),
    }
    total = (weights.retrieval * parts["retrieval"] + weights.distillation * parts["distillation"]
             + weights.uniformity * parts["uniformity"])
    return total, parts
