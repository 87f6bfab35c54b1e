"""Benchmark: XLA:CPU's options on the decoder's own work. Each variant (a set of
``XLA_FLAGS``) runs in its own process, since XLA reads its flags once: the
float32 matmuls of SmolLM2's layers (forward and both backward products) in
GFLOP/s, a LoRA MNTP step on real titles in tokens/s, and the final hidden
states of the real model on one batch, compared with the default's (a variant
that changes them beyond float32 rounding is no candidate for a default).
PyTorch's rate on the same matmuls, when torch is installed, comes last.

    python -m jaxrec.bench xla-cpu --rounds 2
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "onednn_dot_fusion": "--xla_cpu_experimental_onednn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn_graph_greedy": "--xla_cpu_use_xnnpack=true "
                        "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "xnn_dot_fusion": "--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "ynn_dot_fusion": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT",
    "custom_matmul_tiling": "--xla_cpu_enable_custom_matmul_tiling=true",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "single_threaded_eigen": "--xla_cpu_multi_thread_eigen=false",
}
"""Candidate option sets of the installed jaxlib (0.10), by name."""

TOKENS = 2048
HIDDEN, INTERMEDIATE = 576, 1536
SHAPES = [(TOKENS, HIDDEN, INTERMEDIATE), (TOKENS, INTERMEDIATE, HIDDEN), (TOKENS, HIDDEN, HIDDEN),
          (HIDDEN, TOKENS, INTERMEDIATE), (INTERMEDIATE, TOKENS, HIDDEN)]
"""(m, k, n) of SmolLM2's projections on 2,048 tokens: gate/up and down forward (the
second is also the activation gradient of the first), o forward, and the weight
gradients (the transposed activations times the output gradients)."""


def child(variant: str, out: Path, steps: int, seconds: float) -> None:
    """Measure one variant (XLA_FLAGS already set by the parent) into ``out``."""
    import jax

    from jaxrec.bench.flops import matmul_peak
    from jaxrec.bench.train import lora_engine, step_batches
    from jaxrec.data.item_tables import read_items
    from jaxrec.models.decoder import Decoder
    from jaxrec.models.lm import load_pretrained

    result = {"variant": variant, "flags": os.environ.get("XLA_FLAGS", "")}
    result["matmul_gflops"] = matmul_peak(seconds, SHAPES)["by_shape"]
    lm = load_pretrained("smollm2-135m")
    titles = read_items("ml-100k").titles
    batches = step_batches(lm, titles, "mntp", 32, steps + 2)["padded"]
    engine = lora_engine(lm, "mntp")
    for batch in batches[:2]:  # compile, then one warm step
        jax.block_until_ready(engine.train_step(batch))
    start = time.perf_counter()
    for batch in batches[2:]:
        metrics = engine.train_step(batch)
    jax.block_until_ready(metrics)
    seconds_taken = time.perf_counter() - start
    result["mntp_tokens_per_s"] = round(sum(int(b["attention_mask"].sum()) for b in batches[2:]) / seconds_taken, 1)
    batch, decoder = batches[0], Decoder(lm.config)
    hidden = jax.jit(lambda p, ids, mask: decoder.apply({"params": p}, ids, mask, output="hidden"))(
        lm.params, batch["input_ids"], batch["attention_mask"])
    np.save(out.with_suffix(".npy"), np.asarray(hidden, np.float32))
    out.write_text(json.dumps(result))


def _torch_rates(seconds: float) -> dict[str, float] | None:
    try:
        import torch
    except ImportError:
        return None
    from jaxrec.bench.flops import matmul_peak

    torch.set_num_threads(os.cpu_count() or 1)
    with torch.no_grad():
        return matmul_peak(seconds, SHAPES, framework="torch")["by_shape"]


def _spawn(variant: str, out: Path, steps: int, seconds: float, log) -> dict | None:
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + VARIANTS[variant]).strip()}
    command = [sys.executable, "-m", "jaxrec.bench", "xla-cpu", "--child", variant, "--out", str(out),
               "--steps", str(steps), "--seconds", str(seconds)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log(f"{variant}: did not run ({reason[:200]})")
        return None
    return json.loads(out.read_text())


def run(variants: list[str], rounds: int, steps: int, seconds: float, log=print) -> dict:
    """Every variant once per round, in turn, so a slower stretch of the machine
    hits each alike; each variant's best round counts."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    names = ["default"] + [v for v in variants if v != "default"]
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(rounds):
            for name in names:
                out = Path(scratch) / f"{name}-{round_index}.json"
                measured = _spawn(name, out, steps, seconds, log)
                if measured is None:
                    continue
                hidden = np.load(out.with_suffix(".npy"))
                reference = np.load(Path(scratch) / "default-0.npy") if name != "default" else hidden
                measured["hidden_max_abs_diff"] = float(np.max(np.abs(hidden - reference)))
                measured["matmul_best_gflops"] = max(measured["matmul_gflops"].values())
                kept = best.get(name)
                if kept is None or measured["mntp_tokens_per_s"] > kept["mntp_tokens_per_s"]:
                    best[name] = measured
                log(f"round {round_index + 1} {name}: MNTP {measured['mntp_tokens_per_s']:.0f} tokens/s, matmuls "
                    f"up to {measured['matmul_best_gflops']:.0f} GFLOP/s, hidden states differ from the default's "
                    f"by {measured['hidden_max_abs_diff']:.2e}")
    base = best["default"]["mntp_tokens_per_s"]
    for measured in best.values():
        measured["mntp_speedup"] = round(measured["mntp_tokens_per_s"] / base, 3)
    torch_rates = _torch_rates(seconds)
    return {"variants": best, "torch_matmul_gflops": torch_rates, "cpu_count": os.cpu_count()}
