"""Run by test_training in a subprocess with 8 fake CPU devices; prints a JSON report."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax

import jaxrec
from jaxrec.train.mesh import MeshSpec
from tests.conftest import build_torch_model, save_tokenizer
from tests.train_helpers import build_engine, title_batches


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    directory = Path(tempfile.mkdtemp())
    build_torch_model("llama-tied-gqa").save_pretrained(str(directory))
    save_tokenizer(directory)
    lm = jaxrec.load_lm(directory)
    batches = title_batches(6)
    report = {}
    for objective in ("mntp", "contrastive"):
        runs = {}
        for name, spec, devices in (
            ("one", MeshSpec(data=1), jax.devices()[:1]),
            ("eight", MeshSpec(data=2, fsdp=2, tensor=2), jax.devices()),
        ):
            engine = build_engine(lm, objective, spec, devices)
            runs[name] = [float(engine.train_step(b)["loss"]) for b in batches]
        report[objective] = runs
    engine = build_engine(lm, "mntp", MeshSpec(data=2, fsdp=2, tensor=2), jax.devices())
    for batch in title_batches(20, seed=1):
        engine.train_step(batch)
    report["compiles_over_20_steps"] = engine.step_fn._cache_size()
    q = engine.frozen["model"]["params"]["layers"]["attn"]["q"]["kernel"]
    report["param_sharded"] = len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
