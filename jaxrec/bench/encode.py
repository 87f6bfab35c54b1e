"""Benchmark: encode all item titles of a dataset with jaxrec and with
transformers PyTorch eager, same model file, titles, pooling and batch size."""

from __future__ import annotations

import os
import time

import numpy as np

from jaxrec import assets
from jaxrec.bench import torch_reference
from jaxrec.bench.flops import decoder_forward_flops, matmul_peak
from jaxrec.data.item_tables import read_items
from jaxrec.models.lm import load_pretrained


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


def _timed(encode) -> tuple[np.ndarray, float, float]:
    """(vectors, first call seconds incl. compilation, second call seconds)."""
    start = time.perf_counter()
    first = encode()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = encode()
    warm = time.perf_counter() - start
    if not np.array_equal(first, second):
        raise AssertionError("two encodings of the same titles differ")
    return first, cold, warm


def run(model_name: str = "smollm2-135m", data: str = "ml-100k", batch_size: int = 64, log=print) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    titles = read_items(data).titles
    lm = load_pretrained(model_name, "float32")
    lengths = [len(ids) for ids in lm.tokenize(titles, 512)]
    real_flops = decoder_forward_flops(lm.config, lengths)
    log(f"jaxrec: {lm}; {len(titles)} titles, {sum(lengths)} tokens, {real_flops / 1e12:.2f} TFLOP on real tokens")
    peak = matmul_peak()
    log(f"matmul peak (jax, float32): {peak['gflops']} GFLOP/s {peak['by_shape']}")

    padded, padded_cold, padded_warm = _timed(lambda: lm.encode(titles, batch_size=batch_size, packed=False,
                                                                progress=False))
    log(f"jaxrec padded (batches of {batch_size}, length buckets): {padded_cold:.1f} s first call, "
        f"{padded_warm:.1f} s second")
    packed, packed_cold, packed_warm = _timed(lambda: lm.encode(titles, progress=False))
    log(f"jaxrec packed (rows of 64 tokens, 512 per call): {packed_cold:.1f} s first call, {packed_warm:.1f} s second")

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

    cosine = lambda a, b: float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
    achieved = real_flops / packed_warm / 1e9
    return {
        "bench": "encode",
        "model": model_name,
        "data": data,
        "items": len(titles),
        "real_tokens": int(sum(lengths)),
        "batch_size": batch_size,
        "padded_seconds": round(padded_cold, 2),
        "padded_warm_seconds": round(padded_warm, 2),
        "packed_seconds": round(packed_cold, 2),
        "packed_warm_seconds": round(packed_warm, 2),
        "torch_eager_seconds": round(torch_seconds, 2),
        "torch_threads": threads,
        "speedup_padded_warm": round(torch_seconds / padded_warm, 2),
        "speedup_packed": round(torch_seconds / packed_cold, 2),
        "speedup_packed_warm": round(torch_seconds / packed_warm, 2),
        "packed_over_padded_warm": round(padded_warm / packed_warm, 2),
        "real_token_gflops_packed": round(achieved, 1),
        "real_token_gflops_padded": round(real_flops / padded_warm / 1e9, 1),
        "matmul_peak_gflops": peak["gflops"],
        "share_of_peak_packed": round(achieved / peak["gflops"], 3),
        "max_abs_diff_torch": float(np.abs(packed - reference).max()),
        "min_cosine_packed_vs_torch": cosine(packed, reference),
        "min_cosine_packed_vs_padded": cosine(packed, padded),
    }
