"""Bad checkpoints and configs fail with errors that name the file, key or field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import safetensors.numpy

import jaxrec
from jaxrec.models.decoder_config import UnsupportedConfigError, load_hf_config
from jaxrec.models.sources import CheckpointError


@pytest.fixture
def checkpoint_copy(tiny_checkpoints, tmp_path):
    source, _ = tiny_checkpoints("qwen2-untied")
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


def _rewrite_tensors(directory, change):
    path = directory / "model.safetensors"
    tensors = safetensors.numpy.load_file(str(path))
    change(tensors)
    safetensors.numpy.save_file(tensors, str(path))


def _rewrite_config(directory, change):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_truncated_safetensors_names_the_file(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        jaxrec.load_lm(checkpoint_copy)


def test_header_only_fragment_is_truncated(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        jaxrec.load_lm(checkpoint_copy)


def test_extra_tensor_is_named(checkpoint_copy):
    _rewrite_tensors(checkpoint_copy, lambda t: t.update({"model.layers.0.self_attn.rotary_scale": np.ones(4, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) 'model\.layers\.0\.self_attn\.rotary_scale'"):
        jaxrec.load_lm(checkpoint_copy)


def test_missing_tensor_is_named(checkpoint_copy):
    _rewrite_tensors(checkpoint_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        jaxrec.load_lm(checkpoint_copy)


def test_misshaped_tensor_names_key_file_and_expected_shape(checkpoint_copy):
    _rewrite_tensors(checkpoint_copy, lambda t: t.update({"model.norm.weight": np.ones(63, np.float32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.norm\.weight' has shape \(63,\), expected \(64,\)"):
        jaxrec.load_lm(checkpoint_copy)


def test_tied_config_with_untied_checkpoint_is_an_error(checkpoint_copy):
    _rewrite_config(checkpoint_copy, lambda c: c.update(tie_word_embeddings=True))
    with pytest.raises(CheckpointError, match="'lm_head.weight'"):
        jaxrec.load_lm(checkpoint_copy)


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda c: c.update(use_sliding_window=True), "use_sliding_window"),
        (lambda c: c.update(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "rope_type='yarn'"),
        (lambda c: c.update(model_type="mistral"), "model_type='mistral'"),
        (lambda c: c.update(hidden_act="gelu"), "hidden_act='gelu'"),
        (lambda c: c.update(layer_types=["full_attention", "sliding_attention"]), "layer_types"),
        (lambda c: c.pop("hidden_size"), "'hidden_size' is missing"),
    ],
)
def test_unsupported_config_field_is_named(checkpoint_copy, change, field):
    _rewrite_config(checkpoint_copy, change)
    with pytest.raises(UnsupportedConfigError) as info:
        jaxrec.load_lm(checkpoint_copy)
    assert field in str(info.value) and "config.json" in str(info.value)


def test_transformers4_unsupported_rope_scaling_is_named(checkpoint_copy):
    def to_v4(config):
        config.pop("rope_parameters")
        config.update(rope_theta=1e4, rope_scaling={"type": "dynamic", "factor": 2.0})

    _rewrite_config(checkpoint_copy, to_v4)
    with pytest.raises(UnsupportedConfigError, match=r"rope_scaling\.rope_type='dynamic'"):
        load_hf_config(checkpoint_copy)


def test_directory_without_weights_is_explained(tmp_path, checkpoint_copy):
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        jaxrec.load_lm(checkpoint_copy)


def test_unknown_name_lists_known_assets():
    from jaxrec.assets import AssetError

    with pytest.raises(AssetError, match="smollm2-135m"):
        jaxrec.load_lm("no-such-model-anywhere")
