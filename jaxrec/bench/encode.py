"""Benchmark: encode all item titles of a dataset with jaxrec and with
transformers PyTorch eager, same model file, titles, pooling and batch size."""

from __future__ import annotations

import os
import time

import numpy as np

from jaxrec import assets
from jaxrec.bench import torch_reference
from jaxrec.data.item_tables import read_items
from jaxrec.models.lm import load_lm


def _torch_encode(model, tokenizer, titles, batch_size: int) -> np.ndarray:
    """The plain PyTorch recipe: batches in dataset order, each padded to its
    longest title, masked mean over real tokens, bidirectional attention."""
    out = []
    for start in range(0, len(titles), batch_size):
        batch = tokenizer(titles[start : start + batch_size], padding=True, return_tensors="np")
        states = torch_reference.hidden_states(model, batch["input_ids"], batch["attention_mask"], bidirectional=True)
        weights = batch["attention_mask"][..., None].astype(np.float32)
        out.append((states * weights).sum(1) / weights.sum(1))
    return np.concatenate(out)


def run(model_name: str = "smollm2-135m", data: str = "ml-100k", batch_size: int = 64, log=print) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    titles = read_items(data).titles
    lm = load_lm(model_name, "float32")
    log(f"jaxrec: {lm}; {len(titles)} titles, batch {batch_size}")

    start = time.perf_counter()
    cold = lm.encode(titles, batch_size=batch_size, progress=False)
    jax_cold = time.perf_counter() - start
    start = time.perf_counter()
    warm = lm.encode(titles, batch_size=batch_size, progress=False)
    jax_warm = time.perf_counter() - start
    log(f"jaxrec: {jax_cold:.1f} s first call (compilation included), {jax_warm:.1f} s second call")

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    path = assets.resolve_file(model_name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
    ).eval()
    torch_reference.make_bidirectional(model)
    tokenizer = lm.tokenizer
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    start = time.perf_counter()
    reference = _torch_encode(model, tokenizer, titles, batch_size)
    torch_seconds = time.perf_counter() - start
    log(f"torch eager ({threads} threads): {torch_seconds:.1f} s")

    return {
        "bench": "encode",
        "model": model_name,
        "data": data,
        "items": len(titles),
        "batch_size": batch_size,
        "jaxrec_seconds": round(jax_cold, 2),
        "jaxrec_warm_seconds": round(jax_warm, 2),
        "torch_eager_seconds": round(torch_seconds, 2),
        "torch_threads": threads,
        "speedup": round(torch_seconds / jax_cold, 2),
        "speedup_warm": round(torch_seconds / jax_warm, 2),
        "max_abs_diff": float(np.abs(cold - reference).max()),
        "runs_identical": bool(np.array_equal(cold, warm)),
    }
