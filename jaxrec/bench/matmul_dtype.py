"""Benchmark: ``model.matmul_dtype`` on the LLM stages' work. SmolLM2-135M's LoRA
steps (MNTP, contrastive, CSFT, on the ``train`` bench's packed batches of
ml-100k titles) and a bidirectional encoding pass, each with float32 and with
bfloat16 matmul operands, alternating in one process on the same batches
(each keeps its best round); then how far bfloat16 moves each step's loss and
the encoded item vectors.

    python -m jaxrec.bench matmul-dtype --steps 4 --rounds 2
"""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "bfloat16")


def run(steps: int, rounds: int, batch_size: int = 32, log=print) -> dict:
    import jax

    from jaxrec.bench.alternate import best_seconds_per_step
    from jaxrec.bench.train import lora_engine, step_batches
    from jaxrec.data.item_tables import read_items
    from jaxrec.models.lm import load_pretrained

    base = load_pretrained("smollm2-135m")
    lms = {dtype: base.replace(config=base.config.replace(matmul_dtype=dtype)) for dtype in DTYPES}
    titles = read_items("ml-100k").titles
    result: dict = {"bench": "matmul-dtype", "batch_size": batch_size, "steps": steps}
    title_batches = step_batches(base, titles, "mntp", batch_size, steps)["packed"]
    work = {"mntp": title_batches, "contrastive": title_batches,
            "csft": step_batches(base, titles, "csft", batch_size, steps)["packed"]}
    for objective, batches in work.items():
        engines = {dtype: lora_engine(lm, objective) for dtype, lm in lms.items()}
        losses = {}
        for dtype, engine in engines.items():  # compile every shape first; the first step's loss from the same state
            losses[dtype] = float(engine.evaluate(batches[0])["loss"])
            for batch in {b["input_ids"].shape: b for b in batches}.values():
                jax.block_until_ready(engine.train_step(batch))
        best = best_seconds_per_step({d: e.train_step for d, e in engines.items()}, batches, rounds,
                                     lambda m: log(f"{objective}: {m}"), jax.block_until_ready)
        tokens = np.mean([int(b["attention_mask"].sum()) for b in batches])
        result[objective] = {
            "tokens_per_s": {d: round(tokens / s, 1) for d, s in best.items()},
            "speedup": round(best["float32"] / best["bfloat16"], 2),
            "loss": {d: round(v, 5) for d, v in losses.items()},
        }
        log(f"{objective}: {result[objective]}")
    result["encode"] = _encode(lms, titles[1:], rounds, log)
    return result


def _encode(lms: dict, titles: list[str], rounds: int, log) -> dict:
    """Mean-pooled bidirectional vectors of 512 titles (as the encode task embeds items)."""
    import time

    chosen = titles[:512]
    vectors, seconds = {}, {dtype: float("inf") for dtype in lms}
    for _ in range(rounds):
        for dtype, lm in lms.items():
            start = time.perf_counter()
            vectors[dtype] = np.asarray(lm.encode(chosen, pooling="mean", mask="bidirectional", progress=False))
            seconds[dtype] = min(seconds[dtype], time.perf_counter() - start)
    full, mixed = vectors["float32"], vectors["bfloat16"]
    cosine = np.sum(full * mixed, 1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(mixed, axis=1))
    result = {"titles_per_s": {d: round(len(chosen) / s, 1) for d, s in seconds.items()},
              "speedup": round(seconds["float32"] / seconds["bfloat16"], 2),
              "vector_cosine_min": round(float(cosine.min()), 5),
              "vector_relative_error_max": round(float(np.max(np.linalg.norm(full - mixed, axis=1)
                                                              / np.linalg.norm(full, axis=1))), 5)}
    log(f"encode: {result}")
    return result
