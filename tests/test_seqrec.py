"""SASRec / GRU4Rec: no future leakage, padding never reaches real positions."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.seqrec.models import BERT4Rec, GRU4Rec, SASRec, last_position
from jaxrec.seqrec.spec import BackboneSpec, ItemsSpec, RecommenderSpec


def last_state(states, history):
    """The state at each row's last real item, taken from every position's states."""
    return jnp.take_along_axis(states, last_position(history)[:, None, None], axis=1)[:, 0]


CONFIG = BackboneSpec(hidden=16, layers=2, heads=2, dropout=0.0, max_history=8)
TABLE = jax.random.normal(jax.random.key(1), (21, 16))


def _init(model, history):
    return model.init(jax.random.key(0), history, TABLE)


QUERY_RESIDUAL = dataclasses.replace(CONFIG, norm_first=True, query_residual=True)


@pytest.mark.parametrize("model", [SASRec(CONFIG), SASRec(dataclasses.replace(CONFIG, norm_first=True)),
                                   SASRec(QUERY_RESIDUAL), GRU4Rec(CONFIG)])
def test_output_at_t_ignores_items_after_t(model):
    history = jnp.asarray([[3, 7, 1, 9, 4, 2, 0, 0]])
    params = _init(model, history)
    base = np.asarray(model.apply(params, history, TABLE))
    for t in range(5):
        changed = history.at[0, t + 1 :].set(jnp.where(history[0, t + 1 :] > 0, 11, 0))
        out = np.asarray(model.apply(params, changed, TABLE))
        np.testing.assert_allclose(out[0, : t + 1], base[0, : t + 1], atol=1e-5, err_msg=f"position {t}")
        assert np.abs(out[0, t + 1 : 6] - base[0, t + 1 : 6]).max() > 1e-4


@pytest.mark.parametrize("model", [
    SASRec(CONFIG), SASRec(dataclasses.replace(CONFIG, norm_first=True)), BERT4Rec(CONFIG),
    SASRec(dataclasses.replace(CONFIG, layers=1)), SASRec(QUERY_RESIDUAL), BERT4Rec(QUERY_RESIDUAL), GRU4Rec(CONFIG),
])
def test_last_only_equals_the_full_states_at_the_last_item(model):
    history = jnp.asarray([[3, 7, 1, 9, 4, 2, 0, 0], [5, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8]])
    params = _init(model, history)
    full = last_state(model.apply(params, history, TABLE), history)
    last = model.apply(params, history, TABLE, last_only=True)
    assert last.shape == (3, 1, 16)
    np.testing.assert_allclose(np.asarray(last[:, 0]), np.asarray(full), atol=1e-5)


def test_trailing_padding_does_not_change_the_user_state():
    model = SASRec(CONFIG)
    short = jnp.asarray([[3, 7, 1, 0, 0, 0, 0, 0]])
    params = _init(model, short)
    a = last_state(model.apply(params, short, TABLE), short)
    b = last_state(model.apply(params, short[:, :4], TABLE), short[:, :4])
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_dropout_only_in_training():
    model = SASRec(BackboneSpec(hidden=16, layers=1, heads=1, dropout=0.5, max_history=8))
    history = jnp.asarray([[3, 7, 1, 9]])
    params = _init(model, history)
    np.testing.assert_array_equal(model.apply(params, history, TABLE), model.apply(params, history, TABLE))
    a = model.apply(params, history, TABLE, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = model.apply(params, history, TABLE, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_pca_matches_numpy_up_to_sign():
    from jaxrec.seqrec.item_vectors import pca

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

    from jaxrec.data.item_tables import DataError
    from jaxrec.seqrec.item_vectors import load_item_embeddings

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
    from jaxrec.seqrec.item_vectors import FrozenTextAdapter, IDEmbedding

    ids = IDEmbedding(5, 8)
    table = ids.apply(ids.init(jax.random.key(0)))
    assert table.shape == (6, 8) and not np.asarray(table[0]).any()
    frozen = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32)
    adapter = FrozenTextAdapter((10, 8))
    params = adapter.init(jax.random.key(0), frozen)
    table = adapter.apply(params, frozen)
    assert table.shape == (6, 8) and not np.asarray(table[0]).any()
    assert set(params["params"]) == {"dense_0", "dense_1"}  # the frozen matrix is not a parameter


def test_conditioning_of_frozen_matrices_matches_numpy():
    from jaxrec.seqrec.item_vectors import condition

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(7, 5)) * [1.0, 10.0, 0.1, 3.0, 0.0] + [30.0, -4.0, 1.0, 0.0, 2.0]).astype(np.float32)
    np.testing.assert_array_equal(condition(x, "none"), x)
    scaled = condition(x, "scale")
    np.testing.assert_allclose(scaled, x / np.mean(np.sqrt((x.astype(np.float64) ** 2).sum(1))), rtol=1e-6)
    assert np.mean(np.linalg.norm(scaled, axis=1)) == pytest.approx(1.0, rel=1e-6)
    centred = x - x.mean(0)
    np.testing.assert_allclose(condition(x, "center_scale"), centred / np.linalg.norm(centred, axis=1).mean(),
                               rtol=1e-5, atol=1e-6)
    standard = condition(x, "standardize")
    expected = centred[:, :4] / centred[:, :4].std(0) / np.sqrt(5)
    np.testing.assert_allclose(standard[:, :4], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(standard[:, 4], 0.0)  # a constant dimension carries nothing
    assert np.mean(np.sum(standard**2, axis=1)) == pytest.approx(4 / 5, rel=1e-5)
    with pytest.raises(ValueError, match="unknown conditioning 'zscore'"):
        condition(x, "zscore")


def test_whitening_gives_an_identity_covariance_over_the_kept_directions():
    from jaxrec.seqrec.item_vectors import condition, frozen_matrix_transform

    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(6, 6)) * [50.0, 5.0, 1.0, 0.2, 0.05, 0.0]  # one direction carries nothing
    x = (rng.normal(size=(40, 6)) @ mixing.T + 7.0).astype(np.float32)
    white = condition(x, "whiten").astype(np.float64)
    assert white.shape == (40, 5)  # the null direction is dropped
    np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(5) / 5, atol=1e-5)
    # the same rows as numpy's eigendecomposition of the covariance, up to each direction's sign
    x64 = x.astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(x64.T, bias=True))
    order = np.argsort(values)[::-1][:5]
    expected = (x64 - x64.mean(0)) @ vectors[:, order] / np.sqrt(values[order] * 5)
    np.testing.assert_allclose(np.abs(white), np.abs(expected), rtol=1e-3, atol=1e-5)
    top2 = frozen_matrix_transform(x, "whiten", 2)(x).astype(np.float64)  # with pca: the top directions, whitened
    np.testing.assert_allclose(np.abs(top2), np.abs(expected[:, :2]) * np.sqrt(5 / 2), rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="cannot keep 6 whitened components"):
        frozen_matrix_transform(x, "whiten", 6)


def test_seqrec_conditions_the_frozen_matrix_before_pca(tmp_path):
    from jaxrec.seqrec.item_vectors import condition, pca
    from jaxrec.tasks.seqrec import frozen_item_table
    from jaxrec.tasks.seqrec import SeqrecConfig

    rng = np.random.default_rng(1)
    matrix = (rng.normal(size=(6, 8)) * 5 + 20).astype(np.float32)
    np.save(tmp_path / "item_embeddings.npy", matrix)
    (tmp_path / "item_ids.json").write_text(json.dumps([str(i) for i in range(1, 7)]))
    config = SeqrecConfig()
    config.recommender = RecommenderSpec(items=ItemsSpec(kind="llm", embeddings=str(tmp_path), conditioning="center_scale", pca=3))
    table = frozen_item_table(config.recommender.items, [""] + [str(i) for i in range(1, 7)])
    assert table.shape == (7, 3) and not table[0].any()
    np.testing.assert_allclose(table[1:], pca(condition(matrix, "center_scale"), 3), rtol=1e-5, atol=1e-6)


def test_initialisation_options_of_positions_ids_and_adapter():
    from jaxrec.seqrec.recommender import Recommender

    spec = RecommenderSpec(backbone=BackboneSpec(hidden=64, max_history=50, embedding_init=1.0),
                           items=ItemsSpec(kind="id+llm", embeddings="x", adapter_init="xavier_normal", adapter_norm=True))
    model = Recommender(spec, 400, llm_dim=300)
    params = model.init(jax.random.key(0), jnp.ones((1, 50), jnp.int32))["params"]
    positions = params["backbone"]["encoder"]["positions"]["embedding"]
    assert np.std(positions) == pytest.approx(1.0, rel=0.05)
    assert np.std(params["id_items"]["embedding"]) == pytest.approx(1.0, rel=0.05)
    kernel = params["adapter"]["dense_0"]["kernel"]
    assert np.std(kernel) == pytest.approx(np.sqrt(2 / (300 + 64)), rel=0.05)  # xavier normal
    assert "norm" in params["adapter"]
    default = Recommender(RecommenderSpec(backbone=BackboneSpec(hidden=64, max_history=50)), 400)
    params = default.init(jax.random.key(0), jnp.ones((1, 50), jnp.int32))["params"]
    assert np.std(params["backbone"]["encoder"]["positions"]["embedding"]) == pytest.approx(0.02, rel=0.05)


def test_id_dropout_leaves_a_share_of_items_only_their_adapted_llm_part_in_training():
    from jaxrec.seqrec.recommender import Recommender, init_variables

    spec = RecommenderSpec(backbone=BackboneSpec(hidden=16, max_history=5),
                           items=ItemsSpec(kind="id+llm", embeddings="x", id_dropout=0.3))
    model = Recommender(spec, 2000, llm_dim=12)
    llm = np.random.default_rng(0).normal(size=(2001, 12)).astype(np.float32)
    variables = init_variables(model, jax.random.key(0), llm, None)
    ids = np.asarray(variables["params"]["id_items"]["embedding"])
    adapted = np.asarray(model.apply(variables, method=Recommender.adapted_llm_items))
    trained, _ = model.apply(variables, None, True, rngs={"dropout": jax.random.key(1)},
                             method=Recommender._items_and_adapted)
    trained = np.asarray(trained)[1:]
    dropped = np.all(np.isclose(trained, adapted[1:], atol=1e-7), axis=1)
    np.testing.assert_allclose(trained[~dropped], ids[1:][~dropped] + adapted[1:][~dropped], rtol=1e-6, atol=1e-7)
    assert dropped.mean() == pytest.approx(0.3, abs=0.04)  # about id_dropout of the 2,000 items
    evaluated = np.asarray(model.apply(variables, method=Recommender.items))  # no dropping outside training
    np.testing.assert_allclose(evaluated[1:], ids[1:] + adapted[1:], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="id_dropout drops the ID part"):
        RecommenderSpec(items=ItemsSpec(kind="llm", embeddings="x", id_dropout=0.3))


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
    # held-out items (4 here, then never a target) leave the softmax: as if their rows were not there
    warm_targets = np.where(targets == 4, 3, targets)
    held = logits.copy()
    held[..., 4] = -np.inf
    logp = held - np.log(np.exp(held - held.max(-1, keepdims=True)).sum(-1, keepdims=True)) - held.max(-1, keepdims=True)
    expected = -np.mean([logp[b, l, warm_targets[b, l]] for b, l in zip(*np.nonzero(real))])
    got = full_softmax_loss(jnp.asarray(states), jnp.asarray(table), jnp.asarray(warm_targets), np.array([1, 2, 3, 5]))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # and their gradients are those of the logits masked to -inf (the held-out rows get none)
    def masked(states, table):
        logits = jnp.where(jnp.arange(6) == 4, -jnp.inf, jnp.einsum("blh,nh->bln", states, table).at[..., 0].set(-jnp.inf))
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(warm_targets)[..., None], -1)[..., 0]
        return jnp.sum(nll * real) / real.sum()

    left_out = lambda states, table: full_softmax_loss(states, table, jnp.asarray(warm_targets), np.array([1, 2, 3, 5]))
    for want, have in zip(jax.grad(masked, (0, 1))(jnp.asarray(states), jnp.asarray(table)),
                          jax.grad(left_out, (0, 1))(jnp.asarray(states), jnp.asarray(table))):
        np.testing.assert_allclose(np.asarray(have), np.asarray(want), rtol=1e-5, atol=1e-6)
    softplus = lambda x: np.log1p(np.exp(x))
    terms = [
        softplus(-states[b, l] @ table[targets[b, l]]) + softplus(states[b, l] @ table[negatives[b, l, 0]])
        for b, l in zip(*np.nonzero(real))
    ]
    got = sampled_bce_loss(jnp.asarray(states), jnp.asarray(table), jnp.asarray(targets), jnp.asarray(negatives))
    np.testing.assert_allclose(float(got), np.mean(terms), rtol=1e-5)


def _toy_data():
    """Users a (items 1-6), b (7-9), c (10-13); training parts exclude the last two."""
    from jaxrec.data.prep import SeqData

    items = np.arange(1, 14, dtype=np.int32)
    return SeqData(
        item_ids=np.array([""] + [str(i) for i in range(1, 14)]), titles=[""] * 14, attributes=[{}] * 14,
        user_ids=np.array(["a", "b", "c"]), offsets=np.array([0, 6, 9, 13]), items=items, timestamps=items,
        stats={}, report={},
    )


def test_training_and_evaluation_examples():
    from jaxrec.seqrec.histories import evaluation_examples, item_popularity, training_examples

    data = _toy_data()
    prefixes = training_examples(data, 3, "prefixes")
    np.testing.assert_array_equal(prefixes.history, [[1, 0, 0], [1, 2, 0], [1, 2, 3], [10, 0, 0]])
    np.testing.assert_array_equal(prefixes.targets, [[2, 0, 0], [0, 3, 0], [0, 0, 4], [11, 0, 0]])
    sequences = training_examples(data, 2, "sequences")
    np.testing.assert_array_equal(sequences.history, [[2, 3], [10, 0]])
    np.testing.assert_array_equal(sequences.targets, [[3, 4], [11, 0]])
    last = training_examples(data, 2, "last")  # the loss at each user's last position only
    np.testing.assert_array_equal(last.history, sequences.history)
    np.testing.assert_array_equal(last.targets, [[0, 4], [11, 0]])
    windows = training_examples(data, 3, "windows")
    np.testing.assert_array_equal(windows.history, [[2, 3, 4], [7, 0, 0], [10, 11, 0]])
    chunks = training_examples(data, 2, "chunks")  # every training item after a user's first is a target once
    np.testing.assert_array_equal(chunks.history, [[1, 2], [3, 0], [10, 0]])
    np.testing.assert_array_equal(chunks.targets, [[2, 3], [4, 0], [11, 0]])
    # no validation or test item ever appears in training examples
    held_out = {5, 6, 8, 9, 12, 13}
    for examples in (prefixes, sequences, windows, chunks):
        assert not held_out & (set(examples.history.ravel()) | set(examples.targets.ravel()))
        for user, row in zip(examples.users, examples.history):  # each example knows its user
            assert set(row[row > 0].tolist()) <= set(data.sequence(user).tolist())
    history, targets, lengths = evaluation_examples(data, "valid", 3)
    np.testing.assert_array_equal(history, [[2, 3, 4], [7, 0, 0], [10, 11, 0]])
    np.testing.assert_array_equal(targets, [5, 8, 12])
    np.testing.assert_array_equal(lengths, [4, 1, 2])
    history, targets, _ = evaluation_examples(data, "test", 3)
    np.testing.assert_array_equal(history, [[3, 4, 5], [7, 8, 0], [10, 11, 12]])
    np.testing.assert_array_equal(targets, [6, 9, 13])
    np.testing.assert_array_equal(item_popularity(data), [0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0])


def test_bert4rec_masking_rates_and_targets():
    from jaxrec.seqrec.models import mask_items

    history = jnp.asarray(np.tile([[5, 3, 8, 2, 9, 4, 0, 0]], (4000, 1)))
    masked, targets = mask_items(jax.random.key(0), history, 0.2, 99, 50)
    masked, targets = np.asarray(masked), np.asarray(targets)
    chosen = masked == 99
    assert abs(chosen[:, :6].mean() - 0.2) < 0.01
    assert not chosen[:, 6:].any()  # padding is never masked
    np.testing.assert_array_equal(targets[chosen], np.asarray(history)[chosen])
    assert (targets[~chosen] == 0).all()
    np.testing.assert_array_equal(masked[~chosen], np.asarray(history)[~chosen])


def test_bert4rec_masking_as_llmemb_80_10_10_and_last_item_rows():
    from jaxrec.seqrec.models import mask_items

    history = np.tile([[5, 3, 8, 2, 9, 4, 0, 0]], (6000, 1))
    only_last = np.arange(6000) % 2 == 1
    masked, targets = mask_items(jax.random.key(1), jnp.asarray(history), 0.6, 99, 50, 0.1, 0.1, jnp.asarray(only_last))
    masked, targets = np.asarray(masked), np.asarray(targets)
    cloze, last = ~only_last, only_last
    predicted = targets[cloze] > 0
    assert abs(predicted[:, :6].mean() - 0.6) < 0.01 and not predicted[:, 6:].any()
    np.testing.assert_array_equal(targets[cloze][predicted], history[cloze][predicted])
    shown = masked[cloze][predicted]
    assert abs(np.mean(shown == 99) - 0.8) < 0.015
    kept = shown == history[cloze][predicted]
    assert abs(np.mean(kept) - 0.1 - 0.1 / 50) < 0.015  # kept, or replaced by the same item by chance
    assert ((shown >= 1) & (shown <= 50) | (shown == 99)).all()
    # the last-item rows: exactly the last real item is masked and predicted
    np.testing.assert_array_equal(masked[last][:, 5], 99)
    np.testing.assert_array_equal(targets[last], np.tile([[0, 0, 0, 0, 0, 4, 0, 0]], (3000, 1)))
    np.testing.assert_array_equal(masked[last][:, :5], history[last][:, :5])


def test_bert4rec_is_bidirectional_and_predicts_at_an_appended_mask():
    from jaxrec.seqrec.models import BERT4Rec
    from jaxrec.seqrec.recommender import Recommender


    model = BERT4Rec(CONFIG)
    history = jnp.asarray([[3, 7, 1, 9, 0, 0, 0, 0]])
    params = _init(model, history)
    base = np.asarray(model.apply(params, history, TABLE))
    changed = np.asarray(model.apply(params, history.at[0, 3].set(11), TABLE))
    assert np.abs(changed[0, 0] - base[0, 0]).max() > 1e-4  # position 0 sees position 3

    recommender = Recommender(RecommenderSpec(backbone=BackboneSpec(model="bert4rec", hidden=16, heads=2, max_history=5),
                                              examples="sequences"), 20)
    variables = recommender.init(jax.random.key(0), jnp.ones((1, 5), jnp.int32))
    short = jnp.asarray([[3, 7, 0, 0]])
    items = recommender.apply(variables, method=Recommender.items)
    users = recommender.apply(variables, short, items, method=Recommender.user_vectors)
    states, _ = recommender.apply(variables, jnp.asarray([[3, 7, 21, 0, 0]]))  # 21 = the mask id
    np.testing.assert_allclose(np.asarray(users[0]), np.asarray(states[0, 2]), atol=1e-6)


def test_byte_dropout_rate_and_scale():
    from jaxrec.seqrec.models import Dropout

    x = jnp.ones((200_000,))
    out = np.asarray(Dropout(0.3, False).apply({}, x, rngs={"dropout": jax.random.key(0)}))
    kept = out != 0
    assert abs(1 - kept.mean() - round(0.3 * 256) / 256) < 0.005
    assert abs(out.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    np.testing.assert_array_equal(Dropout(0.3, True).apply({}, x), x)


def test_gelu_is_the_exact_erf_gelu():
    from jaxrec.seqrec.models import _gelu

    x = jnp.linspace(-8.0, 8.0, 1001)
    np.testing.assert_allclose(np.asarray(_gelu(x)), np.asarray(jax.nn.gelu(x, approximate=False)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda v: _gelu(v).sum())(x)),
                               np.asarray(jax.grad(lambda v: jax.nn.gelu(v, approximate=False).sum())(x)), atol=1e-5)


def test_query_residual_block_matches_the_public_pytorch_sasrec():
    """The pre-LN block of the public PyTorch SASRec (which LLMEmb's and
    LLM-SRec's code build on), written out in torch, on a full-length history
    (that code also lets real items attend to left padding; jaxrec never does)."""
    torch = pytest.importorskip("torch")
    config = BackboneSpec(hidden=16, layers=2, heads=2, ffn=16, dropout=0.0, max_history=6, norm_first=True,
                          query_residual=True, activation="relu", scale_embeddings=False)
    model, history = SASRec(config), jnp.asarray([[4, 9, 1, 17, 3, 12]])
    params = model.init(jax.random.key(3), history, TABLE)
    p = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a), dtype=torch.float64), params)["params"]["encoder"]
    norm = lambda x, q: torch.nn.functional.layer_norm(x, (16,), q["scale"], q["bias"], eps=1e-6)
    dense = lambda x, q: x @ q["kernel"] + q["bias"]

    seqs = torch.tensor(np.asarray(TABLE), dtype=torch.float64)[torch.tensor(np.asarray(history))] + p["positions"]["embedding"]
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    for i in range(2):
        b = p[f"block_{i}"]
        attention = torch.nn.MultiheadAttention(16, 2, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            attention.in_proj_weight.copy_(b["_SelfAttention_0"]["qkv"]["kernel"].T)
            attention.in_proj_bias.copy_(b["_SelfAttention_0"]["qkv"]["bias"])
            attention.out_proj.weight.copy_(b["_SelfAttention_0"]["out"]["kernel"].T)
            attention.out_proj.bias.copy_(b["_SelfAttention_0"]["out"]["bias"])
        q = norm(seqs, b["LayerNorm_0"])                    # Q = attention_layernorm(seqs)
        seqs = q + attention(q, seqs, seqs, attn_mask=future, need_weights=False)[0]  # Q + mha(Q, seqs, seqs)
        seqs = norm(seqs, b["LayerNorm_1"])                 # forward_layernorm
        seqs = seqs + dense(torch.relu(dense(seqs, b["Dense_0"])), b["Dense_1"])  # feed-forward, += inputs
    expected = norm(seqs, p["final_norm"]).detach().numpy()
    np.testing.assert_allclose(np.asarray(model.apply(params, history, TABLE)), expected, atol=1e-4)



def test_bias_free_gru4rec_without_output_layer_matches_torch_gru():
    """The authors' GRU4Rec: torch's GRU(bias=False), its last layer's states read out directly."""
    import torch

    config = BackboneSpec(hidden=16, layers=2, dropout=0.0, max_history=8, gru_bias=False, output_layer=False)
    model = GRU4Rec(config)
    history = jnp.asarray([[3, 7, 1, 9, 0, 0, 0, 0], [2, 4, 6, 8, 10, 12, 14, 16]])
    params = model.init(jax.random.key(0), history, TABLE)["params"]
    assert "out" not in params and all("bias" not in str(path) for path in jax.tree_util.tree_leaves_with_path(params))
    gru = torch.nn.GRU(16, 16, num_layers=2, bias=False, batch_first=True)
    with torch.no_grad():
        for layer in range(2):
            cell = params[f"gru_{layer}"]
            for kind, weight in (("i", gru.__getattr__(f"weight_ih_l{layer}")), ("h", gru.__getattr__(f"weight_hh_l{layer}"))):
                weight.copy_(torch.cat([torch.from_numpy(np.asarray(cell[f"{kind}{g}"]["kernel"]).T.copy()) for g in "rzn"]))
    inputs = torch.from_numpy(np.asarray(TABLE)[np.asarray(history)])
    expected, _ = gru(inputs)
    got = model.apply({"params": params}, history, TABLE)
    real = np.asarray(history) > 0  # padding comes after the real items and never reaches their states
    np.testing.assert_allclose(np.asarray(got)[real], expected.detach().numpy()[real], atol=1e-5)
    last = model.apply({"params": params}, history, TABLE, last_only=True)
    np.testing.assert_allclose(np.asarray(last[:, 0]), np.asarray(last_state(got, history)), atol=1e-6)


def test_weight_decay_on_every_parameter_as_an_option():
    from jaxrec.train.optim import OptimizerSpec, make_optimizer

    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zero = jax.tree.map(jnp.zeros_like, params)
    for decay_all, bias_after in ((False, 1.0), (True, 1.0 - 0.1 * 0.5)):
        tx = make_optimizer(OptimizerSpec(learning_rate=0.1, weight_decay=0.5, decay="constant", clip_norm=None,
                                          decay_all=decay_all), 10)
        updates, _ = tx.update(zero, tx.init(params), params)
        new = jax.tree.map(lambda p, u: p + u, params, updates)
        assert float(new["bias"][0]) == pytest.approx(bias_after) and float(new["kernel"][0, 0]) == pytest.approx(0.95)
    with pytest.raises(ValueError, match=r"b2 must be in \[0, 1\)"):
        OptimizerSpec(b2=1.0)


def test_recency_positions_and_xavier_init_of_the_public_pytorch_sasrec():
    from jaxrec.seqrec.models import position_ids
    from jaxrec.seqrec.recommender import Recommender

    config = dataclasses.replace(CONFIG, max_history=4, positions="from_end")
    history = jnp.asarray([[3, 7, 1, 0], [2, 4, 0, 0], [5, 6, 8, 9]])
    # as rows left-padded to 4 with absolute positions: the last real item is always at 3
    assert position_ids(history, config).tolist() == [[1, 2, 3, 3], [2, 3, 3, 3], [0, 1, 2, 3]]
    assert position_ids(history, CONFIG).tolist() == [[0, 1, 2, 3]]
    # so a history's user state is the same whatever the width its row is padded to
    model = SASRec(config)
    params = model.init(jax.random.key(0), history, TABLE)
    short = model.apply(params, history[:, :3][1:2], TABLE, last_only=True)
    np.testing.assert_allclose(np.asarray(short), np.asarray(model.apply(params, history[1:2], TABLE, last_only=True)),
                               atol=1e-6)
    spec = RecommenderSpec(backbone=BackboneSpec(hidden=64, max_history=128, weight_init="xavier_normal"))
    params = Recommender(spec, 2000).init(jax.random.key(0), jnp.ones((1, 128), jnp.int32))["params"]
    assert np.std(params["id_items"]["embedding"]) == pytest.approx(np.sqrt(2 / (2001 + 64)), rel=0.05)
    assert np.std(params["backbone"]["encoder"]["positions"]["embedding"]) == pytest.approx(np.sqrt(2 / 192), rel=0.1)
    qkv = params["backbone"]["encoder"]["block_0"]["_SelfAttention_0"]["qkv"]["kernel"]
    assert np.std(qkv) == pytest.approx(np.sqrt(2 / (64 + 192)), rel=0.05)


def test_batches_drawn_with_replacement_are_seeded_and_split_over_processes():
    from jaxrec.data.batches import IndexBatches

    take = lambda indices, rng: {"rows": indices}
    one = IndexBatches(10, 8, take, seed=3, with_replacement=True)
    batches = [next(one)["rows"] for _ in range(6)]
    drawn = np.concatenate(batches)
    assert one.steps_per_epoch == 1 and any(len(set(b.tolist())) < len(b) for b in batches)  # repeats happen
    assert drawn.min() >= 0 and drawn.max() <= 9
    halves = [IndexBatches(10, 8, take, seed=3, process_index=p, process_count=2, with_replacement=True) for p in (0, 1)]
    for expected in batches:
        np.testing.assert_array_equal(np.concatenate([next(h)["rows"] for h in halves]), expected)
    again = IndexBatches(10, 8, take, seed=3, with_replacement=True)
    np.testing.assert_array_equal(next(again)["rows"], batches[0])


@pytest.mark.parametrize("model", ["sasrec", "gru4rec", "bert4rec"])
def test_batches_cut_to_their_longest_history_give_the_full_widths_loss_and_user_vectors(model):
    """Training and evaluation batches are cut to their longest row (a power of two
    of columns): the loss (without dropout) and the user vectors equal the full width's."""
    from jaxrec.seqrec.histories import trim_padding, trimmed_width
    from jaxrec.seqrec.recommender import Recommender, init_variables, make_objective

    spec = RecommenderSpec(backbone=BackboneSpec(model=model, hidden=16, heads=2, dropout=0.0, max_history=40, positions="from_end"),
                           loss="bce",
                           negatives=2,
                           examples="sequences")
    recommender = Recommender(spec, 50)
    variables = init_variables(recommender, jax.random.key(0), None, None)
    rng = np.random.default_rng(0)
    lengths = np.array([3, 11, 7, 1])
    history = np.where(np.arange(40)[None] < lengths[:, None], rng.integers(1, 51, (4, 40)), 0).astype(np.int32)
    assert trimmed_width(history) == 16 and trimmed_width(history[[0, 3]]) == 8 and trimmed_width(history, 64) == 40
    assert trimmed_width(history[:, :30]) == 30  # 16 of 30 columns: not worth another compilation
    batch = {"history": history, "targets": np.roll(history, -1, axis=1) * (history > 0),
             "negatives": rng.integers(1, 51, (4, 40, 2)).astype(np.int32), "mask_last": np.zeros(4, bool)}
    cut = trim_padding(batch)
    assert cut["history"].shape == (4, 16) and cut["negatives"].shape == (4, 16, 2) and cut["mask_last"].shape == (4,)
    user = lambda h: np.asarray(recommender.apply(variables, jnp.asarray(h), recommender.apply(
        variables, method=Recommender.items), method=Recommender.user_vectors))
    np.testing.assert_allclose(user(history[:, :15] if model == "bert4rec" else history), user(cut["history"]),
                               rtol=1e-5, atol=1e-6)
    if model != "bert4rec":  # its masking draws per position: another width draws other masks
        _, loss = make_objective(recommender)
        value = lambda b: float(loss(variables, {}, b, jax.random.key(1))[0])
        assert value(cut) == pytest.approx(value(batch), rel=1e-5)


def test_prefixes_under_bce_score_each_rows_target_against_the_negatives_at_its_position():
    from jaxrec.seqrec.losses import sampled_bce_loss
    from jaxrec.seqrec.recommender import Recommender, init_variables, make_objective

    spec = RecommenderSpec(backbone=BackboneSpec(hidden=16, heads=2, dropout=0.0, max_history=5),
                           loss="bce",
                           negatives=2,
                           examples="prefixes")
    model = Recommender(spec, 30)
    variables = init_variables(model, jax.random.key(0), None, None)
    history = np.array([[3, 0, 0, 0, 0], [4, 5, 6, 0, 0]], np.int32)
    targets = np.array([[7, 0, 0, 0, 0], [0, 0, 8, 0, 0]], np.int32)  # at each row's last item
    negatives = np.zeros((2, 5, 2), np.int32)
    negatives[0, 0], negatives[1, 2] = [9, 10], [11, 12]  # drawn where the target is, 0 elsewhere
    _, loss = make_objective(model)
    value = float(loss(variables, {}, {"history": history, "targets": targets, "negatives": negatives},
                       jax.random.key(1))[0])
    states, items = model.apply(variables, jnp.asarray(history), last_only=True)
    expected = sampled_bce_loss(states, items, jnp.asarray([[7], [8]]), jnp.asarray([[[9, 10]], [[11, 12]]]))
    assert value == pytest.approx(float(expected), rel=1e-6)


def test_ridge_probe_r2_matches_a_direct_fit_and_scores_noise_at_zero():
    from jaxrec.seqrec.probe import _folds, ridge_r2, ridge_r2s

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    y = x @ rng.normal(size=(6, 3)) + 0.5 * rng.normal(size=(200, 3)) + 4.0
    result = ridge_r2(x, y, lambdas=(0.1, 1e4), folds=4, seed=2)
    residual = total = 0.0
    for held in _folds(200, 4, 2):  # the same folds, fitted with numpy's solver (intercept by centring)
        fit = np.setdiff1d(np.arange(200), held)
        xm, ym = x[fit].mean(0), y[fit].mean(0)
        w = np.linalg.solve((x[fit] - xm).T @ (x[fit] - xm) + 0.1 * np.eye(6), (x[fit] - xm).T @ (y[fit] - ym))
        residual += (((x[held] - xm) @ w - (y[held] - ym)) ** 2).sum()
        total += ((y[held] - ym) ** 2).sum()
    assert result["by_lambda"][0.1] == pytest.approx(1 - residual / total, rel=1e-9)
    assert result["lambda"] == 0.1 and result["r2"] > 0.9  # 0.25 of noise variance against ~6 of signal
    assert abs(result["by_lambda"][1e4]) < result["r2"]  # shrunk to the mean: about no fit
    both = ridge_r2s(x, [y, y[:, 0]], lambdas=(0.1, 1e4), folds=4, seed=2)  # one SVD per fold for both targets
    assert both[0] == result and both[1] == ridge_r2(x, y[:, 0], lambdas=(0.1, 1e4), folds=4, seed=2)
    noise = ridge_r2(rng.normal(size=(200, 6)), y, folds=4)
    assert noise["r2"] < 0.02  # unrelated features explain nothing (the best lambda shrinks to the mean)
