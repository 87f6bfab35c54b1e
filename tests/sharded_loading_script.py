"""Run by test_training (test_weights_load_straight_into_their_fsdp_shards) in a subprocess with 8 fake CPU devices: loads
an HF directory into an fsdp=8 mesh and prints a JSON report of where the
parameters landed and how much resident memory the load took."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

import jaxrec
from jaxrec.bench.memory import peak_resident_bytes, reset_peak, resident_bytes
from jaxrec.train.mesh import MeshSpec
from jaxrec.train.session import TrainingSession
from jaxrec.train.optim import OptimizerSpec
from jaxrec.train.loop import LoopSpec


def main(model_dir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    session = TrainingSession(MeshSpec(data=1, fsdp=8), OptimizerSpec(), LoopSpec(steps=1), seed=0)
    jax.device_put(np.zeros(4), jax.devices()[1]).block_until_ready()  # runtime up before measuring
    before = resident_bytes()
    reset_peak()
    lm = jaxrec.load_lm(model_dir, shardings=session.param_shardings)
    jax.block_until_ready(lm.params)
    peak = peak_resident_bytes() - before

    leaves = jax.tree_util.tree_leaves_with_path(lm.params)
    model_bytes = sum(x.nbytes for _, x in leaves)
    per_device = {d.id: 0 for d in jax.devices()}
    shards = {}
    for path, x in leaves:
        for shard in x.addressable_shards:
            per_device[shard.device.id] += shard.data.nbytes
        shards[jax.tree_util.keystr(path)] = {"shape": list(x.shape),
                                              "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards})}
    sharded = {k: np.asarray(x) for k, x in ((jax.tree_util.keystr(p), x) for p, x in leaves)}
    del lm
    whole = jaxrec.load_lm(model_dir)
    same = all(np.array_equal(sharded[jax.tree_util.keystr(p)], np.asarray(x))
               for p, x in jax.tree_util.tree_leaves_with_path(whole.params))
    print(json.dumps({"model_bytes": model_bytes, "peak_load_bytes": peak, "per_device_bytes": per_device,
                      "shards": shards, "same_values_as_unsharded_load": same}))


if __name__ == "__main__":
    main(sys.argv[1])
