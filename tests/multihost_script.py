"""Run by test_multihost: one JAX process of a 2-process job (or a single
process with all 8 devices), training a tiny LoRA model (MNTP, CSFT, or
contrastive; padded or packed rows) on Grain batches over a given mesh.
Prints the losses and the final trainable parameters as JSON."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np


def main(process_id: int, num_processes: int, port: int, mesh: tuple[int, int, int] = (2, 2, 2),
         objective: str = "mntp", packed: bool = False) -> None:
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    assert jax.device_count() == 8, jax.devices()

    import jaxrec
    from jaxrec.data.batches import GrainBatches
    from jaxrec.methods.llm2rec import csft
    from jaxrec.shapes import pack_sequences, pad_batch
    from jaxrec.train.session import gather
    from jaxrec.train.mesh import MeshSpec, local_batch_devices, process_batch_block, rules_of
    from tests.conftest import build_torch_model, save_tokenizer
    from tests.train_helpers import build_engine

    directory = Path(tempfile.mkdtemp())
    build_torch_model("llama-tied-gqa").save_pretrained(str(directory))  # seeded: the same weights everywhere
    save_tokenizer(directory)
    lm = jaxrec.load_lm(directory)
    spec = MeshSpec(*mesh)
    engine = build_engine(lm, objective, spec, jax.devices())
    batch_axes = rules_of(spec)["batch"]
    block, blocks = process_batch_block(engine.mesh, batch_axes)
    local_devices = local_batch_devices(engine.mesh, batch_axes)
    if objective == "csft":  # a history and its target in each example; target positions per device's rows
        collate = lambda rows: csft.collate(list(rows), 2, 32, packed, blocks=local_devices)
    elif packed:  # each device's titles in its own rows
        collate = lambda rows: pack_sequences(list(rows), 16, 2, 16, blocks=local_devices)
    else:  # each process pads its rows to its own length bucket (8 to 32), which the processes then agree on
        collate = lambda rows: pad_batch(list(rows), 2, 32)

    rng = np.random.default_rng(0)
    longest = 12 if packed and objective != "csft" else 29
    titles = [rng.integers(3, 128, size=rng.integers(3, longest)).tolist() for _ in range(64)]
    if objective == "csft":
        titles = [(ids, [0] * (len(ids) // 2) + [1] * (len(ids) - len(ids) // 2)) for ids in titles]
    data = GrainBatches(len(titles), 16, lambda i, _: titles[i], collate, seed=1, process_index=block,
                        process_count=blocks)
    losses = [float(engine.train_step(next(data))["loss"]) for _ in range(4)]
    trained = jax.tree.leaves(gather(engine.state.trainable))
    if jax.process_index() == 0:
        print(json.dumps({"losses": losses, "processes": jax.process_count(),
                          "trainable": [np.asarray(x, np.float64).ravel().tolist() for x in trained]}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), tuple(int(n) for n in sys.argv[4].split(",")),
         sys.argv[5], sys.argv[6] == "packed")
