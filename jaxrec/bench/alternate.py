"""Timing several variants of one step in one process: each round runs every
variant over the same batches in turn, so a slower stretch of the machine
hits them alike, and each variant keeps its best round."""

from __future__ import annotations

import time
from typing import Callable


def best_seconds_per_step(variants: dict[str, Callable[[dict], object]], batches: dict[str, list[dict]] | list[dict],
                          rounds: int, log=print, block: Callable[[object], object] = lambda x: x) -> dict[str, float]:
    """``variants``: name -> a step taking one batch; ``batches``: the batches every
    variant runs (or each its own list); ``block`` waits for a step's result."""
    best = {name: float("inf") for name in variants}
    for round_index in range(rounds):
        for name, step in variants.items():
            these = batches[name] if isinstance(batches, dict) else batches
            start = time.perf_counter()
            for batch in these:
                result = step(batch)
            block(result)
            best[name] = min(best[name], (time.perf_counter() - start) / len(these))
            log(f"round {round_index + 1} {name}: {best[name] * 1000:.1f} ms per step (best so far)")
    return best
