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
from tests.train_helpers import LORA, assert_same_csft_loss_and_gradients, build_engine, title_batches

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
    from jaxrec.methods.llm2rec import contrastive, mntp
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
    bound = contrastive.make_loss(model, contrastive.ContrastiveSpec(views="dropout"), mntp.MaskingSpec(), 1, ())
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


def _write_random_llama(directory: Path, hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """An HF LLaMA directory with random float32 weights, written tensor by
    tensor from jaxrec's own conversion table; returns its weight bytes."""
    from safetensors.numpy import save_file

    from jaxrec.models.convert import hf_tensor_shapes
    from jaxrec.models.decoder_config import config_from_hf_dict

    hf = {"model_type": "llama", "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
          "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": vocab, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 128, "tie_word_embeddings": True, "torch_dtype": "float32"}
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(hf))
    rng = np.random.default_rng(0)
    tensors = {key: rng.standard_normal(shape, dtype=np.float32)
               for key, shape in hf_tensor_shapes(config_from_hf_dict(hf, source=str(directory))).items()}
    save_file(tensors, str(directory / "model.safetensors"))
    return sum(t.nbytes for t in tensors.values())


def test_weights_load_straight_into_their_fsdp_shards(tmp_path):
    """With fsdp=8 each device holds 1/8 of every parameter, the values equal an
    unsharded load, and the load's resident-memory peak stays near the model
    size (the shards themselves) instead of twice it (a whole copy, then shards)."""
    model_bytes = _write_random_llama(tmp_path / "model", hidden=512, layers=24, intermediate=1536, vocab=1024)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "tests.sharded_loading_script", str(tmp_path / "model")],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model_bytes"] == model_bytes
    assert report["same_values_as_unsharded_load"]
    for name, leaf in report["shards"].items():
        (shard_shape,) = leaf["shard_shapes"]  # one shape: every device holds an equal piece
        assert np.prod(shard_shape) * 8 == np.prod(leaf["shape"]), (name, leaf)
    for device, held in report["per_device_bytes"].items():
        assert held == model_bytes // 8, (device, held)
    largest_leaf = 24 * 512 * 1536 * 4
    assert report["peak_load_bytes"] < model_bytes + 2 * largest_leaf, report["peak_load_bytes"] / model_bytes


def test_bfloat16_compute_keeps_float32_lora_weights(tiny_checkpoints):
    lm = jaxrec.load_lm(tiny_checkpoints("llama-tied-gqa")[0], dtype="bfloat16")
    engine = build_engine(lm, "mntp")
    lora = engine.state.trainable["model"]["lora"]
    assert {str(x.dtype) for x in jax.tree.leaves(lora)} == {"float32"}
    assert str(engine.frozen["model"]["params"]["layers"]["mlp"]["up"]["kernel"].dtype) == "bfloat16"
    batch = title_batches(1)[0]
    losses = [float(engine.train_step(batch)["loss"]) for _ in range(10)]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < losses[0]


def test_csft_logits_at_target_positions_only_give_the_full_loss_and_gradients(tiny_lm):
    from jaxrec.methods.llm2rec.csft import target_positions

    rng = np.random.default_rng(4)
    ids = rng.integers(3, 128, size=(3, 14)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :5] = 0  # left padding
    target = np.zeros_like(ids)
    target[0, 10:], target[1, 6:], target[2, :] = 1, 1, 1  # row 2: no history, its first token has no logit
    rows, columns, valid = target_positions(target, mask)  # one group: all rows
    assert valid.sum() == target[:, 1:].sum() and rows.shape == (1, 32)  # budget: 4 + 8 + 13 -> bucket 32
    assert rows[0, :6].tolist() == [0, 0, 0, 0, 1, 1] and columns[0, :6].tolist() == [10, 11, 12, 13, 6, 7]
    per_row = target_positions(target, mask, groups=3)
    assert per_row[0].shape == (3, 14) and per_row[1][0, :4].tolist() == [10, 11, 12, 13]  # 13 -> 16, cut to 14
    full_batch = {"input_ids": ids, "attention_mask": mask, "target_mask": target}
    selected_batch = {**full_batch, "target_rows": rows, "target_columns": columns, "target_valid": valid}
    assert_same_csft_loss_and_gradients(tiny_lm.params, Decoder(tiny_lm.config), selected_batch, full_batch)
