"""Mask semantics on a randomly initialised decoder (no checkpoint needed)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.models.decoder_config import DecoderConfig
from jaxrec.models.decoder import Decoder
from jaxrec.models.layers import attention_mask_matrix, positions_from_mask

CONFIG = DecoderConfig(
    model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
)


@pytest.fixture(scope="module")
def model_and_params():
    model = Decoder(CONFIG)
    ids = jnp.zeros((1, 8), jnp.int32)
    return model, nn.unbox(model.init(jax.random.key(0), ids))


def _first_state(model, params, ids, mask):
    return np.asarray(model.apply(params, jnp.asarray(ids), mask=mask, output="hidden"))[0, 0]


def test_first_position_sees_the_last_token_only_when_bidirectional(model_and_params):
    model, params = model_and_params
    ids = np.array([[5, 9, 13, 17, 21, 25, 29, 33]])
    changed = ids.copy()
    changed[0, -1] = 40
    causal = _first_state(model, params, ids, "causal"), _first_state(model, params, changed, "causal")
    bidi = _first_state(model, params, ids, "bidirectional"), _first_state(model, params, changed, "bidirectional")
    np.testing.assert_array_equal(causal[0], causal[1])
    assert np.abs(bidi[0] - bidi[1]).max() > 1e-4


@pytest.mark.parametrize("remat", ["matmuls", "full"])
def test_remat_policies_give_the_same_loss_and_gradients(model_and_params, remat):
    _, params = model_and_params
    ids = jnp.asarray([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]])
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])

    def loss(variables, config):
        # with attention dropout: a recomputed layer must draw the same dropout mask again
        states = Decoder(config.replace(attention_dropout=0.3)).apply(
            variables, ids, mask, mask="bidirectional", output="hidden", deterministic=False,
            rngs={"dropout": jax.random.key(3)})
        return jnp.sum(jnp.sin(states) * mask[..., None])

    keep_all = jax.value_and_grad(loss)(params, CONFIG.replace(remat="none"))
    recomputed = jax.value_and_grad(loss)(params, CONFIG.replace(remat=remat))
    np.testing.assert_allclose(float(recomputed[0]), float(keep_all[0]), rtol=1e-6)
    for got, want in zip(jax.tree.leaves(recomputed[1]), jax.tree.leaves(keep_all[1])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(keep_all[1])) > 0


def test_an_unknown_remat_policy_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="remat must be one of .*matmuls"):
        CONFIG.replace(remat=True)


def test_attention_dropout_is_active_only_when_not_deterministic(model_and_params):
    _, params = model_and_params
    model = Decoder(CONFIG.replace(attention_dropout=0.5))
    ids = jnp.asarray([[1, 2, 3, 4, 5, 6]])
    eval_out = model.apply(params, ids)
    np.testing.assert_allclose(np.asarray(eval_out), np.asarray(Decoder(CONFIG).apply(params, ids)), atol=1e-5)
    rngs = lambda seed: {"dropout": jax.random.key(seed)}
    a = model.apply(params, ids, deterministic=False, rngs=rngs(1))
    b = model.apply(params, ids, deterministic=False, rngs=rngs(2))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


def test_positions_count_from_the_first_real_token():
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(positions_from_mask(mask))[0, 2:], [0, 1, 2])
    np.testing.assert_array_equal(np.asarray(positions_from_mask(mask))[1, :3], [0, 1, 2])


def test_mask_matrix_hides_padding_and_future():
    mask = jnp.asarray([[0, 1, 1]])
    causal = np.asarray(attention_mask_matrix(mask, "causal"))[0, 0]
    bidi = np.asarray(attention_mask_matrix(mask, "bidirectional"))[0, 0]
    np.testing.assert_array_equal(causal[1:, 1:], [[True, False], [True, True]])
    np.testing.assert_array_equal(bidi[1:, 1:], [[True, True], [True, True]])
    assert not causal[1:, 0].any() and not bidi[1:, 0].any()
    with pytest.raises(ValueError, match="mask must be one of"):
        attention_mask_matrix(mask, "prefix")


def test_continuing_past_keys_and_values_gives_the_states_of_the_whole_sequence(model_and_params):
    """Right-padded starts of different lengths, run once with output="kv", then
    continued: the continuation's states equal those of each whole (start +
    continuation) sequence run at once."""
    model, params = model_and_params
    rng = np.random.default_rng(3)
    lengths, width, ending = [5, 2, 7], 7, 4
    starts = np.zeros((3, width), np.int32)
    for row, n in enumerate(lengths):
        starts[row, :n] = rng.integers(1, 64, n)
    start_mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int32)
    endings = rng.integers(1, 64, (3, ending)).astype(np.int32)
    past = model.apply(params, jnp.asarray(starts), jnp.asarray(start_mask), output="kv")
    assert past["k"].shape == (CONFIG.num_layers, 3, width, CONFIG.num_kv_heads, CONFIG.head_dim)
    continued = model.apply(params, jnp.asarray(endings), output="hidden", past={**past, "mask": jnp.asarray(start_mask)})
    for row, n in enumerate(lengths):
        whole = np.concatenate([starts[row, :n], endings[row]])[None]
        expected = np.asarray(model.apply(params, jnp.asarray(whole), output="hidden"))[0, n:]
        np.testing.assert_allclose(np.asarray(continued)[row], expected, rtol=1e-5, atol=1e-5)


def test_past_keys_and_values_need_a_causal_decoder(model_and_params):
    model, params = model_and_params
    ids = jnp.ones((1, 3), jnp.int32)
    past = model.apply(params, ids, output="kv")
    with pytest.raises(ValueError, match="causal"):
        model.apply(params, ids, mask="bidirectional", past={**past, "mask": jnp.ones((1, 3), jnp.int32)})
