"""jaxrec's decoder against transformers PyTorch on tiny random checkpoints of
every supported architecture variant (float32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy

import jaxrec
from jaxrec.bench import torch_reference
from jaxrec.models.decoder_config import load_hf_config
from jaxrec.models.convert import params_to_hf
from tests.conftest import VARIANTS, build_torch_model, random_ids

ALL = sorted(VARIANTS)


@pytest.mark.parametrize("variant", ALL)
def test_causal_logits_match_transformers(tiny_checkpoints, variant):
    directory, torch_model = tiny_checkpoints(variant)
    lm = jaxrec.load_lm(directory)
    ids = random_ids(2, 24, seed=1)
    expected = torch_reference.logits(torch_model, ids)
    got = np.asarray(lm.logits(ids))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ALL)
def test_bidirectional_states_match_transformers_without_causal_mask(tiny_checkpoints, variant):
    directory, _ = tiny_checkpoints(variant)
    torch_model = build_torch_model(variant)
    torch_reference.make_bidirectional(torch_model)
    lm = jaxrec.load_lm(directory)
    ids = random_ids(2, 20, seed=2)
    expected = torch_reference.hidden_states(torch_model, ids, bidirectional=True)
    got = np.asarray(lm.hidden_states(ids, mask="bidirectional"))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    causal = np.asarray(lm.hidden_states(ids, mask="causal"))
    assert np.abs(causal - expected)[:, :-1].max() > 1e-3, "bidirectional mask had no effect"


@pytest.mark.parametrize("variant", ["llama-tied-gqa", "qwen2-untied"])
@pytest.mark.parametrize("mask", ["causal", "bidirectional"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_real_tokens(tiny_checkpoints, variant, mask, side):
    directory, _ = tiny_checkpoints(variant)
    lm = jaxrec.load_lm(directory)
    lengths = [11, 6, 16]
    width = 16
    rows = [random_ids(1, n, seed=10 + n)[0] for n in lengths]
    ids = np.zeros((len(rows), width), np.int32)
    attention = np.zeros_like(ids)
    for r, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[r, span] = row
        attention[r, span] = 1
    batched = np.asarray(lm.hidden_states(ids, attention, mask=mask))
    for r, row in enumerate(rows):
        alone = np.asarray(lm.hidden_states(row[None], mask=mask))[0]
        real = attention[r].astype(bool)
        np.testing.assert_allclose(batched[r][real], alone, atol=1e-5, rtol=0)


def test_sharded_checkpoint_loads_the_same(tiny_checkpoints):
    single, torch_model = tiny_checkpoints("llama-untied-mha")
    sharded, _ = tiny_checkpoints("llama-untied-mha", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists()
    ids = random_ids(1, 12, seed=3)
    a = np.asarray(jaxrec.load_lm(single).logits(ids))
    b = np.asarray(jaxrec.load_lm(sharded).logits(ids))
    np.testing.assert_array_equal(a, b)


def test_transformers4_rope_keys_give_the_same_config(tiny_checkpoints, tmp_path):
    directory, _ = tiny_checkpoints("llama3-rope-scaling")
    hf = json.loads((directory / "config.json").read_text())
    rope = hf.pop("rope_parameters")
    hf["rope_theta"] = rope.pop("rope_theta")
    hf["rope_scaling"] = rope
    (tmp_path / "config.json").write_text(json.dumps(hf))
    old_style = load_hf_config(tmp_path)
    new_style = load_hf_config(directory)
    assert old_style == new_style
    assert new_style.rope_scaling is not None and new_style.rope_theta == 500000.0


def test_llama3_scaling_changes_frequencies(tiny_checkpoints):
    config = load_hf_config(tiny_checkpoints("llama3-rope-scaling")[0])
    plain = config.replace(rope_scaling=None)
    assert not np.allclose(config.rope_inv_freq(), plain.rope_inv_freq())
    # the slowest frequency's wavelength exceeds original_max / low_freq_factor: divided by factor
    np.testing.assert_allclose(config.rope_inv_freq()[-1], plain.rope_inv_freq()[-1] / 8.0, rtol=1e-6)


@pytest.mark.parametrize("variant", ALL)
def test_conversion_table_round_trips_exactly(tiny_checkpoints, variant):
    directory, _ = tiny_checkpoints(variant)
    lm = jaxrec.load_lm(directory)
    original = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    exported = dict(params_to_hf(lm.config, lm.params))
    assert set(exported) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_bfloat16_compute_stays_close_to_float32(tiny_checkpoints):
    directory, _ = tiny_checkpoints("qwen2-tied")
    ids = random_ids(2, 16, seed=4)
    full = np.asarray(jaxrec.load_lm(directory).hidden_states(ids))
    half_lm = jaxrec.load_lm(directory, dtype="bfloat16")
    half = np.asarray(half_lm.hidden_states(ids)).astype(np.float32)
    assert half_lm.params["layers"]["attn"]["q"]["kernel"].dtype == "bfloat16"
    assert np.abs(half - full).max() / np.abs(full).max() < 0.05


@pytest.mark.parametrize("variant", ALL)
def test_bfloat16_matmul_operands_stay_close_to_transformers_float32(tiny_checkpoints, variant):
    """model.matmul_dtype: bfloat16 rounds the projections' operands only; the weights stay
    float32 and the logits within bfloat16's rounding of transformers' float32 ones."""
    directory, torch_model = tiny_checkpoints(variant)
    ids = random_ids(2, 24, seed=1)
    expected = torch_reference.logits(torch_model, ids)
    mixed = jaxrec.load_lm(directory, matmul_dtype="bfloat16")
    assert mixed.params["layers"]["mlp"]["up"]["kernel"].dtype == "float32"
    got = np.asarray(mixed.logits(ids))
    full = np.asarray(jaxrec.load_lm(directory).logits(ids))
    assert got.dtype == np.float32
    assert 1e-5 < np.abs(got - full).max() / np.abs(expected).max() < 0.02  # rounded, and only by that
    np.testing.assert_allclose(full, expected, atol=1e-4, rtol=0)


def test_model_matmul_dtype_reaches_the_loaded_decoder(tiny_checkpoints):
    from jaxrec.tasks.specs import ModelSpec

    directory, _ = tiny_checkpoints("qwen2-tied")
    assert ModelSpec(name=str(directory), matmul_dtype="bfloat16").load().config.matmul_dtype == "bfloat16"
    assert ModelSpec(name=str(directory)).load().config.matmul_dtype is None
    with pytest.raises(ValueError, match="matmul_dtype must be one of"):
        jaxrec.load_lm(directory, matmul_dtype="float16")


def test_flat_matmul_rounds_its_operands_and_accumulates_in_the_inputs_dtype():
    import jax.numpy as jnp

    from jaxrec.models.layers import flat_matmul

    rng = np.random.default_rng(0)
    x, kernel = rng.normal(size=(3, 5, 64)).astype(np.float32), rng.normal(size=(64, 2, 8)).astype(np.float32)
    rounded = lambda a: np.asarray(jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    want = np.tensordot(rounded(x), rounded(kernel), 1)
    got = flat_matmul(jnp.asarray(x), jnp.asarray(kernel), 1, "bfloat16")
    assert got.dtype == jnp.float32 and got.shape == (3, 5, 2, 8)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    exact = np.tensordot(x.astype(np.float64), kernel.astype(np.float64), 1)
    assert np.abs(np.asarray(flat_matmul(jnp.asarray(x), jnp.asarray(kernel), 1)) - exact).max() < 1e-4
    assert np.abs(np.asarray(got) - exact).max() > 1e-3  # the rounding shows


@pytest.mark.parametrize("variant", ["llama-tied-gqa", "qwen2-untied"])
def test_injected_embeddings_match_transformers_inputs_embeds(tiny_checkpoints, variant):
    """LLM-SRec's [HistoryEmb] path: vectors replacing some token embeddings."""
    import torch

    directory, torch_model = tiny_checkpoints(variant)
    lm = jaxrec.load_lm(directory)
    ids = random_ids(2, 12, seed=4)
    where = np.zeros(ids.shape, bool)
    where[0, [2, 7]] = where[1, 5] = True
    vectors = np.random.default_rng(5).normal(size=(*ids.shape, lm.config.hidden_size)).astype(np.float32)
    with torch.no_grad():
        embeds = torch_model.model.embed_tokens(torch.as_tensor(ids, dtype=torch.long))
        embeds[torch.as_tensor(where)] = torch.as_tensor(vectors[where])
        expected = torch_model.model(inputs_embeds=embeds).last_hidden_state.numpy()
    got = lm.model.apply({"params": lm.params}, ids, output="hidden", injected=vectors, inject_mask=where)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=0)
    plain = np.asarray(lm.hidden_states(ids))
    assert np.abs(plain - expected)[0, 2:].max() > 1e-3, "injection had no effect"


def test_model_families_are_picked_by_model_type():
    from jaxrec.models.decoder_config import UnsupportedConfigError, config_from_hf_dict
    from jaxrec.models.families import FAMILIES, UnknownFamilyError, family

    assert set(FAMILIES) == {"llama", "qwen2", "qwen3"} and family("qwen3").ARCHITECTURE == "Qwen3ForCausalLM"
    with pytest.raises(UnknownFamilyError, match="model_type='gemma' is not supported: jaxrec implements llama"):
        family("gemma")
    hf = dict(model_type="qwen3", vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
              num_attention_heads=2, head_dim=6)
    config = config_from_hf_dict(hf)
    assert config.qk_norm and not config.qkv_bias and config.head_dim == 6 and config.rms_norm_eps == 1e-6
    with pytest.raises(UnsupportedConfigError, match="model_type='gemma'"):
        config_from_hf_dict({**hf, "model_type": "gemma"})
