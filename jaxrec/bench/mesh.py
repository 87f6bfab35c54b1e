"""Benchmark: SmolLM2 LoRA MNTP steps on 8 CPU devices laid out as data=8
against fsdp=8: step time, the parameter and optimizer bytes each device
holds, XLA's per-device memory for the step, and the process's resident peak.

Each layout runs in its own process (the device count is fixed when JAX
starts), on the same padded title batches; the weights are read straight into
their shards, as the training tasks do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

LAYOUTS = {"data8": {"data": 8}, "fsdp8": {"data": 1, "fsdp": 8}}


def run(batch_size: int = 32, steps: int = 6, log=print) -> dict:
    result = {"bench": "mesh", "model": "smollm2-135m", "objective": "mntp (LoRA r8)", "devices": 8,
              "batch_size": batch_size, "timed_steps": steps}
    for name in LAYOUTS:
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()}
        log(f"{name}: {LAYOUTS[name]} in a fresh process")
        child = subprocess.run([sys.executable, "-m", "jaxrec.bench.mesh", name, str(batch_size), str(steps)],
                               capture_output=True, text=True, env=env)
        if child.returncode != 0:
            raise RuntimeError(f"the {name} run failed:\n{child.stderr[-3000:]}")
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        log(f"{name}: {measured}")
        result[name] = measured
    result["fsdp8_over_data8_step_time"] = round(result["fsdp8"]["step_s"] / result["data8"]["step_s"], 2)
    result["fsdp8_over_data8_state_bytes_per_device"] = round(
        result["fsdp8"]["state_bytes_per_device"] / result["data8"]["state_bytes_per_device"], 3)
    return result


def _measure(layout: str, batch_size: int, steps: int) -> dict:
    import jax

    from jaxrec.bench.memory import peak_resident_bytes
    from jaxrec.bench.train import LORA, _selections
    from jaxrec.data.item_tables import read_items
    from jaxrec.models.decoder import Decoder
    from jaxrec.models.lm import load_pretrained
    from jaxrec.methods.llm2rec import mntp
    from jaxrec.shapes import pad_batch
    from jaxrec.train.loop import LoopSpec
    from jaxrec.train.mesh import MeshSpec
    from jaxrec.train.optim import OptimizerSpec
    from jaxrec.train.session import TrainingSession

    session = TrainingSession(MeshSpec(**LAYOUTS[layout]), OptimizerSpec(1e-4, decay="constant"), LoopSpec(steps=1000))
    lm = load_pretrained("smollm2-135m", shardings=session.param_shardings)
    model = Decoder(lm.config.replace(lora=LORA))
    objective = mntp.make_loss(model, mntp.MaskingSpec(rate=0.2), lm.config.pad_token_id or 0,
                               tuple(lm.tokenizer.all_special_ids))
    engine = session.engine(model, session.place(model, lm.params), objective, ("^lora/",), steps_per_epoch=1)
    pad = lm.config.pad_token_id or 0
    batches = [pad_batch(s, pad, 32) for s in _selections(lm, read_items("ml-100k").titles, batch_size, steps + 1)]
    del lm
    first = engine.global_batch(batches[0])
    compiled = engine.step_fn.lower(engine.state, engine.frozen, first, engine.base_rng).compile()
    memory = compiled.memory_analysis()
    jax.block_until_ready(engine.train_step(batches[0]))  # compile and warm up
    start = time.perf_counter()
    for batch in batches[1:]:
        metrics = engine.train_step(batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    held = {d.id: 0 for d in jax.devices()}
    for leaf in jax.tree.leaves((engine.state, engine.frozen)):
        for shard in leaf.addressable_shards:
            held[shard.device.id] += shard.data.nbytes
    out = {"mesh": dict(engine.mesh.shape), "step_s": round(step_s, 3),
           "tokens_per_s": round(sum(int(b["attention_mask"].sum()) for b in batches[1:]) / (step_s * steps), 1),
           "state_bytes_per_device": max(held.values()), "process_peak_resident_bytes": peak_resident_bytes(),
           "loss": float(metrics["loss"])}
    if memory is not None:  # XLA's accounting for one device's program
        out["xla_temp_bytes_per_device"] = int(memory.temp_size_in_bytes)
        out["xla_argument_bytes_per_device"] = int(memory.argument_size_in_bytes)
    return out


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
