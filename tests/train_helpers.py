"""Small training setups shared by the training tests and their subprocess scripts."""

from __future__ import annotations

import numpy as np

from jaxrec.models.decoder import Decoder
from jaxrec.models.layers import LoraSpec
from jaxrec.methods.llm2rec import contrastive, csft, mntp
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.engine import Engine, place_variables
from jaxrec.train.optim import OptimizerSpec, make_optimizer

LORA = LoraSpec(rank=4, alpha=8.0, dropout=0.0)


def title_batches(steps: int, batch: int = 8, length: int = 12, seed: int = 0, vocab: int = 128):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        ids = rng.integers(3, vocab, size=(batch, length)).astype(np.int32)
        lengths = rng.integers(4, length + 1, size=batch)
        mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
        out.append({"input_ids": ids * mask + 2 * (1 - mask), "attention_mask": mask})
    return out


def build_engine(lm, objective: str, mesh_spec=None, devices=None, mode="lora", lr=5e-3, total_steps=100,
                 dropout=0.0):
    config = lm.config.replace(lora=LORA if mode == "lora" else None, attention_dropout=dropout)
    model = Decoder(config)
    mesh = mesh_lib.make_mesh(mesh_spec or mesh_lib.MeshSpec(data=1), devices)
    rules = mesh_lib.rules_of(mesh_lib.MeshSpec())
    import jax

    variables = place_variables(model, lm.params, mesh, rules, jax.random.key(0))
    masking = mntp.MaskingSpec(rate=0.3)
    if objective == "mntp":
        bound = mntp.make_loss(model, masking, mask_token_id=1, special_ids=(0, 1, 2))
    elif objective == "contrastive":
        bound = contrastive.make_loss(
            model, contrastive.ContrastiveSpec(temperature=0.1, views="masking"), masking, 1, (0, 1, 2)
        )
    elif objective == "csft":
        bound = csft.make_loss(model)
    else:
        raise ValueError(objective)
    patterns = ("^lora/",) if mode == "lora" else ("^params/",)
    optimizer = make_optimizer(OptimizerSpec(learning_rate=lr, decay="constant"), total_steps)
    return Engine(model, variables, bound, patterns, optimizer, mesh, seed=0)


def assert_same_csft_loss_and_gradients(params, decoder: Decoder, batch: dict, expected_batch: dict) -> None:
    """CSFT's loss and gradients on ``batch`` equal those on ``expected_batch``."""
    import jax

    _, loss = csft.make_loss(decoder)
    value_and_grad = jax.value_and_grad(lambda p, b: loss({"params": p}, {}, b, jax.random.key(0))[0])
    value, grads = value_and_grad(params, batch)
    expected, expected_grads = value_and_grad(params, expected_batch)
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)

