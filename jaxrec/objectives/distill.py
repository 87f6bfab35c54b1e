"""LLM-SRec: retrieval + distillation + uniformity.

- ``user`` [batch, dim]: f_user of the LLM's [UserOut] state;
- ``items`` [batch, 1 + negatives, dim]: f_item of [ItemOut] states, the
  target first;
- ``teacher`` [batch, dim]: f_CF-user of the frozen SASRec user vector.

retrieval: softmax cross-entropy of user . item over the target and its
negatives; distillation: MSE between L2-normalised user and teacher vectors;
uniformity: log of the mean over pairs of distinct users of
exp(-2 ||z_a - z_b||^2) on normalised user vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxrec.objectives.contrastive import l2_normalize


def retrieval_loss(user: jax.Array, items: jax.Array) -> jax.Array:
    scores = jnp.einsum("bd,bnd->bn", user.astype(jnp.float32), items.astype(jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(scores, jnp.zeros(scores.shape[0], jnp.int32)).mean()


def distillation_loss(user: jax.Array, teacher: jax.Array) -> jax.Array:
    return jnp.mean(jnp.sum(jnp.square(l2_normalize(user) - l2_normalize(teacher)), axis=-1))


def uniformity_loss(z: jax.Array) -> jax.Array:
    z = l2_normalize(z)
    sq_dist = jnp.sum(jnp.square(z[:, None, :] - z[None, :, :]), axis=-1)
    n = z.shape[0]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    mean_kernel = jnp.sum(jnp.where(off_diagonal, jnp.exp(-2.0 * sq_dist), 0.0)) / (n * (n - 1))
    return jnp.log(mean_kernel)


def sequence_distillation_loss(
    user: jax.Array,
    items: jax.Array,
    teacher: jax.Array,
    *,
    retrieval_weight: float = 1.0,
    distillation_weight: float = 1.0,
    uniformity_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    parts = {
        "retrieval": retrieval_loss(user, items),
        "distillation": distillation_loss(user, teacher),
        "uniformity": uniformity_loss(user),
    }
    total = (
        retrieval_weight * parts["retrieval"]
        + distillation_weight * parts["distillation"]
        + uniformity_weight * parts["uniformity"]
    )
    return total, parts
