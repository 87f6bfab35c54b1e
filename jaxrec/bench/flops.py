"""What a benchmark compares its throughput with: the decoder's matmul work on
real tokens, counted from the shapes, and the machine's matmul peak, measured."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np


def decoder_forward_flops(config, lengths: Sequence[int]) -> float:
    """Forward FLOPs of the decoder's layers on texts of ``lengths`` tokens,
    each attending within itself: 2 per multiply-add of the projections and
    the MLP for every real token, plus the attention scores and weighted sum
    over each text's own tokens. The LM head is not counted (encoding stops
    at the last hidden states)."""
    hidden, heads, kv_heads, head_dim = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    projections = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * config.intermediate_size
    lengths = np.asarray(lengths, np.float64)
    per_layer = 2 * projections * lengths.sum() + 2 * 2 * heads * head_dim * (lengths**2).sum()
    return float(per_layer * config.num_layers)


def matmul_peak(seconds: float = 1.0, shapes: Sequence[tuple[int, int, int]] = (
        (2048, 576, 1536), (2048, 1536, 576), (2048, 576, 576), (1024, 1024, 1024)),
        dtype: str = "float32", framework: str = "jax") -> dict:
    """GFLOP/s of matrix products of the decoder's shapes in ``dtype`` (jitted
    ``jnp.dot`` on the default device, or with ``framework="torch"`` torch's
    matmul on the CPU), the best over the shapes (each timed for about
    ``seconds`` after a warm-up)."""
    if framework == "torch":
        import torch

        dot, to_array, sync = torch.matmul, lambda a: torch.from_numpy(a).to(getattr(torch, dtype)), lambda x: x
    else:
        import jax
        import jax.numpy as jnp

        dot, to_array, sync = jax.jit(jnp.dot), lambda a: jnp.asarray(a, dtype), jax.block_until_ready
    best = {}
    for m, k, n in shapes:
        a = to_array(np.random.default_rng(0).standard_normal((m, k), np.float32))
        b = to_array(np.random.default_rng(1).standard_normal((k, n), np.float32))
        sync(dot(a, b))
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            sync(dot(a, b))
            calls += 1
        best[f"{m}x{k}x{n}"] = round(2 * m * k * n * calls / (time.perf_counter() - start) / 1e9, 1)
    return {"gflops": max(best.values()), "by_shape": best}
