"""SCFT (LLMEmb): symmetric CLIP-style loss with soft targets and a learnable
temperature.

With X, Y the two augmented views' embeddings [batch, dim]:
logits = X Y^T / tau, targets = softmax((X X^T + Y Y^T) / 2 * tau), and the
loss averages the cross-entropy of logits against targets row-wise and of
logits^T against targets^T. tau is trained (initialised at 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxrec.objectives.contrastive import l2_normalize

TAU_INIT = 3.0


def soft_clip_loss(x: jax.Array, y: jax.Array, tau: jax.Array, normalize: bool = True) -> jax.Array:
    if normalize:
        x, y = l2_normalize(x), l2_normalize(y)
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    logits = x @ y.T / tau
    targets = jax.nn.softmax((x @ x.T + y @ y.T) / 2 * tau, axis=-1)
    forward = optax.softmax_cross_entropy(logits, targets)
    backward = optax.softmax_cross_entropy(logits.T, targets.T)
    return jnp.mean((forward + backward) / 2)
