"""Optimizer from config: AdamW with a weight-decay mask, warmup then linear /
cosine / constant decay, global-norm clipping and gradient accumulation."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import optax


@dataclasses.dataclass
class OptimizerSpec:
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    decay: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = 0.0
    decay_all: bool = False
    """Weight decay on every parameter, biases and norm scales included (torch's AdamW given all
    parameters, as the LLM2Rec authors' recommenders do); false: matrices only."""
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    accumulate_steps: int = 1

    def __post_init__(self):
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be a positive finite number, got {self.learning_rate}")
        if self.accumulate_steps < 1 or self.warmup_steps < 0:
            raise ValueError("learning_rate must be > 0, accumulate_steps >= 1, warmup_steps >= 0")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


def schedule(spec: OptimizerSpec, total_steps: int) -> optax.Schedule:
    decay_steps = max(total_steps - spec.warmup_steps, 1)
    if spec.decay == "linear":
        after = optax.linear_schedule(spec.learning_rate, 0.0, decay_steps)
    elif spec.decay == "cosine":
        after = optax.cosine_decay_schedule(spec.learning_rate, decay_steps)
    else:
        after = optax.constant_schedule(spec.learning_rate)
    if spec.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps)
    return optax.join_schedules([warmup, after], [spec.warmup_steps])


def decay_mask(params):
    """Weight decay on matrices (kernels, embeddings, LoRA factors), not on
    norm scales, biases or scalars."""
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)


def make_optimizer(spec: OptimizerSpec, total_steps: int) -> optax.GradientTransformation:
    """``total_steps`` counts optimizer updates (after accumulation)."""
    parts = []
    if spec.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(spec.clip_norm))
    parts.append(
        optax.adamw(
            schedule(spec, total_steps), b1=spec.b1, b2=spec.b2, eps=spec.eps,
            weight_decay=spec.weight_decay, mask=None if spec.decay_all else decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if spec.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=spec.accumulate_steps)
    return tx
