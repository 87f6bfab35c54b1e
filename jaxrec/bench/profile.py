"""Profile one jitted LoRA training step (the ``train`` bench's MNTP,
contrastive or CSFT step on SmolLM2-135M) with JAX's profiler: where the
step's time goes, by kind of work and by compiled operation.

    python -m jaxrec.bench profile --objective mntp --layout padded

Each compiled operation the trace shows is matched to the HLO instruction of
that name, whose metadata names the model code it came from (``layers/mlp/
gate``, ``transpose(jvp(...))`` for the backward). Times are summed over the
runtime's threads, so independent operations that ran side by side both
count: the total can exceed the step's wall time.
"""

from __future__ import annotations

import collections
import re
import tempfile
import time
from pathlib import Path

import jax

KINDS = (
    ("matmul, LoRA", lambda name, source: _is_matmul(name) and "_lora_update" in source),
    ("matmul, LM head", lambda name, source: _is_matmul(name) and ("attend" in source or "lm_head" in source)),
    ("matmul, attention scores and weighting", lambda name, source: _is_matmul(name) and "->" in source),
    ("matmul, projections and MLP", lambda name, source: _is_matmul(name)),
    ("layer scan: saving activations for the backward", lambda name, source: "dynamic-update-slice" in name),
    ("layer scan: zero-filling the saved-activation stacks", lambda name, source: "broadcast" in name),
    ("layer scan: reading a layer's weights and activations", lambda name, source: "dynamic-slice" in name),
    ("layout copies and transposes", lambda name, source: name.startswith(("copy", "transpose"))),
    ("waiting on the thread pool", lambda name, source: "ThreadPool" in name),
    ("elementwise and reductions (norms, SiLU, RoPE, softmax, loss, AdamW)", lambda name, source: True),
)
"""Kinds of work, each operation counted in the first that matches."""


def _is_matmul(name: str) -> bool:
    return name.startswith(("ynn_fusion", "xnn_fusion", "dot", "onednn", "custom-call"))


def hlo_sources(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (result shape, the model code it came from)."""
    sources = {}
    for line in hlo_text.splitlines():
        match = re.match(r'\s*(?:ROOT )?%(\S+) = (\S+) .*?op_name="([^"]+)"', line)
        if match:
            sources[match.group(1)] = (match.group(2), match.group(3).removeprefix("jit(train_step)/"))
    return sources


def operation_times(trace_dir: Path) -> collections.Counter:
    """Total nanoseconds of each compiled operation in the trace (thread-pool
    bookkeeping and the executor's own spans left out)."""
    path = next(trace_dir.rglob("*.xplane.pb"))
    totals = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if "XLA" not in line.name:  # the runtime's threads (small programs run on the caller's)
                continue
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "ThreadpoolListener", "end: ")):
                    continue
                totals[event.name] += event.duration_ns
    return totals


def kind_of(name: str, source: str) -> str:
    return next(kind for kind, matches in KINDS if matches(name, source))


def summarize(times: collections.Counter, sources: dict, steps: int, top: int) -> dict:
    by_kind = collections.Counter()
    for name, ns in times.items():
        by_kind[kind_of(name, sources.get(name, ("", ""))[1])] += ns
    total = sum(by_kind.values())
    per_step = lambda ns: round(ns / steps / 1e6, 1)
    return {
        "op_ms_per_step": per_step(total),
        "by_kind": [{"kind": kind, "ms_per_step": per_step(ns), "share": round(ns / total, 3)}
                    for kind, ns in by_kind.most_common()],
        "top_ops": [{"op": name, "ms_per_step": per_step(ns), "shape": sources.get(name, ("?", "?"))[0],
                     "source": sources.get(name, ("?", "?"))[1]} for name, ns in times.most_common(top)],
    }


def run(objective: str, layout: str, batch_size: int = 32, steps: int = 3, top: int = 15,
        trace_dir: str | None = None, log=print) -> dict:
    from jaxrec.bench.train import lora_engine, step_batches
    from jaxrec.data.item_tables import read_items
    from jaxrec.models.lm import load_pretrained

    lm = load_pretrained("smollm2-135m")
    batches = step_batches(lm, read_items("ml-100k").titles, objective, batch_size, 4 * steps)[layout]
    shape = batches[0]["input_ids"].shape
    batches = [b for b in batches if b["input_ids"].shape == shape][:steps]  # one shape: one program
    engine = lora_engine(lm, objective)
    jax.block_until_ready(engine.train_step(batches[0]))  # compiles
    start = time.perf_counter()
    for batch in batches:
        metrics = engine.train_step(batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / len(batches)
    log(f"{objective} {layout} {shape}: {step_s:.3f} s per step untraced")
    directory = Path(trace_dir or tempfile.mkdtemp(prefix="jaxrec-profile-"))
    with jax.profiler.trace(str(directory)):
        for batch in batches:
            metrics = engine.train_step(batch)
        jax.block_until_ready(metrics)
    compiled = engine.step_fn.lower(engine.state, engine.frozen, engine.global_batch(batches[0]),
                                    engine.base_rng).compile()
    summary = summarize(operation_times(directory), hlo_sources(compiled.as_text()), len(batches), top)
    for row in summary["by_kind"]:
        log(f"{row['ms_per_step']:9.1f} ms {100 * row['share']:5.1f}%  {row['kind']}")
    for row in summary["top_ops"]:
        log(f"{row['ms_per_step']:9.1f} ms  {row['op']:36s} {row['shape']:26s} {row['source'][-90:]}")
    return {"bench": "profile", "objective": objective, "layout": layout, "shape": list(shape),
            "step_s": round(step_s, 3), "trace_dir": str(directory), **summary}
