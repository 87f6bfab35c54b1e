"""SASRec / GRU4Rec: no future leakage, padding never reaches real positions."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.seqrec.models import GRU4Rec, SASRec, SeqRecConfig, last_state

CONFIG = SeqRecConfig(hidden=16, layers=2, heads=2, dropout=0.0, max_length=8)
TABLE = jax.random.normal(jax.random.key(1), (21, 16))


def _init(model, history):
    return model.init(jax.random.key(0), history, TABLE)


@pytest.mark.parametrize("model", [SASRec(CONFIG), SASRec(dataclasses.replace(CONFIG, norm_first=True)), GRU4Rec(CONFIG)])
def test_output_at_t_ignores_items_after_t(model):
    history = jnp.asarray([[3, 7, 1, 9, 4, 2, 0, 0]])
    params = _init(model, history)
    base = np.asarray(model.apply(params, history, TABLE))
    for t in range(5):
        changed = history.at[0, t + 1 :].set(jnp.where(history[0, t + 1 :] > 0, 11, 0))
        out = np.asarray(model.apply(params, changed, TABLE))
        np.testing.assert_allclose(out[0, : t + 1], base[0, : t + 1], atol=1e-5, err_msg=f"position {t}")
        assert np.abs(out[0, t + 1 : 6] - base[0, t + 1 : 6]).max() > 1e-4


def test_trailing_padding_does_not_change_the_user_state():
    model = SASRec(CONFIG)
    short = jnp.asarray([[3, 7, 1, 0, 0, 0, 0, 0]])
    params = _init(model, short)
    a = last_state(model.apply(params, short, TABLE), short)
    b = last_state(model.apply(params, short[:, :4], TABLE), short[:, :4])
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_dropout_only_in_training():
    model = SASRec(SeqRecConfig(hidden=16, layers=1, heads=1, dropout=0.5, max_length=8))
    history = jnp.asarray([[3, 7, 1, 9]])
    params = _init(model, history)
    np.testing.assert_array_equal(model.apply(params, history, TABLE), model.apply(params, history, TABLE))
    a = model.apply(params, history, TABLE, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = model.apply(params, history, TABLE, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_pca_matches_numpy_up_to_sign():
    from jaxrec.seqrec.items import pca

    x = np.random.default_rng(0).normal(size=(40, 6)) @ np.diag([5, 4, 3, 0.1, 0.1, 0.1])
    projected = pca(x, 3)
    centered = x - x.mean(0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centered.T))
    reference = centered @ eigenvectors[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(projected), np.abs(reference), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot keep 7 components"):
        pca(x, 7)


def test_item_embedding_files_are_validated_and_reordered(tmp_path):
    import json

    from jaxrec.data.items import DataError
    from jaxrec.seqrec.items import load_item_embeddings

    np.save(tmp_path / "m.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    (tmp_path / "ids.json").write_text(json.dumps(["a", "b", "c"]))
    table = load_item_embeddings(tmp_path / "m.npy", tmp_path / "ids.json", ["", "c", "a"])
    np.testing.assert_array_equal(table, [[0, 0], [4, 5], [0, 1]])
    (tmp_path / "ids.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match=r"shape \(3, 2\) but .* lists 2 item ids"):
        load_item_embeddings(tmp_path / "m.npy", tmp_path / "ids.json", ["", "a"])
    (tmp_path / "ids.json").write_text(json.dumps(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"1 item\(s\) of the dataset have no embedding, e.g. \['z'\]"):
        load_item_embeddings(tmp_path / "m.npy", tmp_path / "ids.json", ["", "a", "z"])


def test_adapters_give_tables_with_a_zero_padding_row():
    from jaxrec.seqrec.items import FrozenTextAdapter, IDEmbedding

    ids = IDEmbedding(5, 8)
    table = ids.apply(ids.init(jax.random.key(0)))
    assert table.shape == (6, 8) and not np.asarray(table[0]).any()
    frozen = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32)
    adapter = FrozenTextAdapter((10, 8))
    params = adapter.init(jax.random.key(0), frozen)
    table = adapter.apply(params, frozen)
    assert table.shape == (6, 8) and not np.asarray(table[0]).any()
    assert set(params["params"]) == {"dense_0", "dense_1"}  # the frozen matrix is not a parameter


def test_next_item_losses_match_numpy():
    from jaxrec.seqrec.losses import full_softmax_loss, sampled_bce_loss

    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 3, 4)).astype(np.float32)
    table = rng.normal(size=(6, 4)).astype(np.float32)
    targets = np.array([[2, 5, 0], [1, 3, 4]])
    negatives = np.array([[[3], [1], [2]], [[5], [2], [1]]])
    logits = states @ table.T
    logits[..., 0] = -np.inf
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    real = targets > 0
    expected = -np.mean([logp[b, l, targets[b, l]] for b, l in zip(*np.nonzero(real))])
    got = full_softmax_loss(jnp.asarray(states), jnp.asarray(table), jnp.asarray(targets))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    softplus = lambda x: np.log1p(np.exp(x))
    terms = [
        softplus(-states[b, l] @ table[targets[b, l]]) + softplus(states[b, l] @ table[negatives[b, l, 0]])
        for b, l in zip(*np.nonzero(real))
    ]
    got = sampled_bce_loss(jnp.asarray(states), jnp.asarray(table), jnp.asarray(targets), jnp.asarray(negatives))
    np.testing.assert_allclose(float(got), np.mean(terms), rtol=1e-5)
