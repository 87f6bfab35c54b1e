"""Training core: LoRA as a separate collection, frozen base, merge; the same
run on 1 and 8 devices (subprocess with 8 fake CPU devices)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxrec
from jaxrec.models.decoder import Decoder
from jaxrec.models.lora import merge_lora
from jaxrec.train.partition import combine, split
from tests.conftest import random_ids
from tests.train_helpers import LORA, build_engine, title_batches

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_lm(tiny_checkpoints):
    return jaxrec.load_lm(tiny_checkpoints("llama-tied-gqa")[0])


def test_lora_with_zero_b_equals_the_base_model_exactly(tiny_lm):
    engine = build_engine(tiny_lm, "mntp")
    ids = random_ids(2, 10, seed=3)
    base = Decoder(tiny_lm.config).apply({"params": tiny_lm.params}, ids)
    with_lora = engine.model.apply(engine.variables(), ids)
    np.testing.assert_array_equal(np.asarray(base), np.asarray(with_lora))


def test_lora_training_moves_only_the_adapters_and_merges_exactly(tiny_lm):
    base_before = jax.tree.map(np.array, tiny_lm.params)
    engine = build_engine(tiny_lm, "mntp")
    assert set(engine.state.trainable["model"]) == {"lora"}
    assert set(engine.frozen["model"]) == {"params"}
    batch = title_batches(1)[0]
    losses = [float(engine.train_step(batch)["loss"]) for _ in range(15)]
    assert np.mean(losses[-3:]) < losses[0]
    frozen = jax.tree.map(np.asarray, engine.frozen["model"]["params"])
    jax.tree.map(np.testing.assert_array_equal, frozen, base_before)
    lora = engine.state.trainable["model"]["lora"]
    assert np.abs(np.asarray(lora["layers"]["attn"]["q"]["b"])).max() > 0

    ids = random_ids(2, 10, seed=4)
    unmerged = engine.model.apply(engine.variables(), ids, mask="bidirectional")
    merged = Decoder(tiny_lm.config).apply({"params": merge_lora(tiny_lm.params, lora, LORA)}, ids, mask="bidirectional")
    np.testing.assert_allclose(np.asarray(merged), np.asarray(unmerged), atol=1e-5, rtol=0)


def test_partition_splits_disjointly_and_combines_back():
    variables = {"params": {"a": {"kernel": 1, "scale": 2}, "extra_embedding": 3}, "lora": {"a": {"a": 4}}}
    trainable, frozen = split(variables, ["^params/extra_embedding$", "^lora/"])
    assert trainable == {"params": {"extra_embedding": 3}, "lora": {"a": {"a": 4}}}
    assert frozen == {"params": {"a": {"kernel": 1, "scale": 2}}}
    assert combine(trainable, frozen) == variables
    with pytest.raises(ValueError, match="match no variable"):
        split(variables, ["^params/lm_head"])


def test_extra_token_rows_train_alone(tiny_lm):
    """New tokens (ids >= vocab_size) get their own embedding rows, which can be
    the only trainable variables."""
    from jaxrec.objectives import model_losses
    from jaxrec.train import mesh as mesh_lib
    from jaxrec.train.engine import Engine, place_variables
    from jaxrec.train.optim import OptimizerSpec, make_optimizer

    config = tiny_lm.config.replace(extra_tokens=2)
    model = Decoder(config)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshSpec(data=1), jax.devices()[:1])
    rules = mesh_lib.rules_of(mesh_lib.MeshSpec())
    params = dict(tiny_lm.params)
    params["extra_embedding"] = np.zeros((2, config.hidden_size), np.float32)
    variables = place_variables(model, params, mesh, rules, jax.random.key(0))
    bound = model_losses.make_contrastive(model, model_losses.ContrastiveSpec(views="dropout"), model_losses.MaskingSpec(), 1, ())
    engine = Engine(model, variables, bound, ("^params/extra_embedding$",), make_optimizer(OptimizerSpec(1e-2), 10), mesh)
    batch = title_batches(1)[0]
    batch["input_ids"][:, 1] = 128  # the first new token
    engine.train_step(batch)
    rows = np.asarray(engine.state.trainable["model"]["params"]["extra_embedding"])
    assert np.abs(rows[0]).max() > 0 and np.abs(rows[1]).max() == 0  # only the used row moved


def test_eight_devices_match_one_device():
    """Same loss trajectory on 1 device and on data=2, fsdp=2, tensor=2; the
    contrastive loss over 8 devices equals the single-device loss; one compile."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.sharding_script"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("mntp", "contrastive"):
        one, eight = np.array(report[name]["one"]), np.array(report[name]["eight"])
        np.testing.assert_allclose(eight, one, rtol=1e-5, err_msg=name)
        assert len(set(one.tolist())) == len(one), "parameters should change from step to step"
    assert report["compiles_over_20_steps"] == 1
    assert report["param_sharded"], "tensor/fsdp axes should actually shard a kernel"


def test_bfloat16_compute_keeps_float32_lora_weights(tiny_checkpoints):
    lm = jaxrec.load_lm(tiny_checkpoints("llama-tied-gqa")[0], dtype="bfloat16")
    engine = build_engine(lm, "mntp")
    lora = engine.state.trainable["model"]["lora"]
    assert {str(x.dtype) for x in jax.tree.leaves(lora)} == {"float32"}
    assert str(engine.frozen["model"]["params"]["layers"]["mlp"]["up"]["kernel"].dtype) == "bfloat16"
    batch = title_batches(1)[0]
    losses = [float(engine.train_step(batch)["loss"]) for _ in range(10)]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < losses[0]
