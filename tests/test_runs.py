"""Run directories as a contract: manifests, chains of stages through
``model.init_from``, and the errors for inputs that are not finished runs."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

import jaxrec
from jaxrec import launch, runs
from jaxrec.errors import RunError
from jaxrec.models.layers import LoraSpec
from jaxrec.models.lm import LM
from jaxrec.models.lora import merge_lora
from tests.conftest import TINY_TITLES, write_tiny_dataset

STAGE = ["batch.size=4", "batch.max_length=16", "batch.eval_batches=1", "loop.steps=3", "loop.log_every=1",
         "loop.save_every=0", "optimizer.learning_rate=0.05", "optimizer.decay=constant", "trainable.lora_rank=4",
         "data.k_core=1"]


def _launch(*settings) -> int:
    return launch.main([a for s in settings for a in ("--set", s)])


def _manifest(run_dir) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _merged_by_hand(params: dict, run_dir) -> dict:
    """``params`` with the run's trained file applied without jaxrec.runs:
    LoRA factors merged with the manifest's scaling, other arrays replacing theirs."""
    entry = _manifest(run_dir)["outputs"]["lm"]
    trained = traverse_util.unflatten_dict(load_file(str(run_dir / entry["path"])), sep="/")
    if "params" in trained:
        flat = traverse_util.flatten_dict(params)
        flat.update(traverse_util.flatten_dict(trained["params"]))
        params = traverse_util.unflatten_dict(flat)
    if "lora" in trained:
        spec = entry["lora"]
        params = merge_lora(params, trained["lora"], LoraSpec(spec["rank"], spec["alpha"], 0.0, spec["targets"]))
    return params


@pytest.fixture
def chain_env(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    return write_tiny_dataset(tmp_path / "data"), tmp_path


@pytest.mark.parametrize("variant", ["llama-tied-gqa", "qwen2-untied"])
def test_lora_chain_csft_mntp_contrastive_encode_equals_merging_by_hand(tiny_checkpoints, chain_env, variant):
    model_dir, _ = tiny_checkpoints(variant)
    data, tmp = chain_env
    common = [f"data.name={data}", *STAGE]
    assert _launch("task=csft", f"model.name={model_dir}", f"run_dir={tmp / 'csft'}", *common) == 0
    assert _launch("task=mntp", f"model.init_from={tmp / 'csft'}", f"run_dir={tmp / 'mntp'}", *common) == 0
    assert _launch("task=contrastive", f"model.init_from={tmp / 'mntp'}", f"run_dir={tmp / 'contrastive'}",
                   "contrastive.views=masking", *common) == 0
    assert _launch("task=encode", f"model.init_from={tmp / 'contrastive'}", f"run_dir={tmp / 'embed'}",
                   f"data.name={data}", "encode.batch_size=4") == 0

    base = jaxrec.load_lm(model_dir)
    params = base.params
    for stage in ("csft", "mntp", "contrastive"):
        params = _merged_by_hand(params, tmp / stage)
    by_hand = LM(base.config, params, base.tokenizer).encode(TINY_TITLES, batch_size=4)
    embedded = np.load(tmp / "embed" / "item_embeddings.npy")
    np.testing.assert_allclose(embedded, by_hand, atol=1e-5)
    # the training moved the weights: the chain is not the base model
    assert np.abs(embedded - base.encode(TINY_TITLES, batch_size=4)).max() > 1e-3

    manifest = _manifest(tmp / "embed")
    assert manifest["status"] == "finished" and manifest["task"] == "encode"
    assert [r["task"] for r in manifest["chain"]] == ["csft", "mntp", "contrastive"]
    assert manifest["init_from"] == str((tmp / "contrastive").absolute())
    assert manifest["base"]["model"] == str(model_dir)
    outputs = manifest["outputs"]
    assert outputs["item_embeddings"]["shape"] == [len(TINY_TITLES), 64]
    assert outputs["item_embeddings"]["sha256"] == runs.sha256_file(tmp / "embed" / "item_embeddings.npy")
    assert _manifest(tmp / "csft")["outputs"]["lm"]["kind"] == "lora"
    # the API loads the same chain from the run directory
    loaded = jaxrec.load_lm(tmp / "contrastive")
    np.testing.assert_allclose(loaded.encode(TINY_TITLES, batch_size=4), by_hand, atol=1e-5)
    assert [r["task"] for r in loaded.lineage] == ["csft", "mntp", "contrastive"]


def test_full_fine_tuning_in_a_chain(tiny_checkpoints, chain_env):
    model_dir, _ = tiny_checkpoints("qwen2-tied")
    data, tmp = chain_env
    common = [f"data.name={data}", *STAGE]
    assert _launch("task=csft", f"model.name={model_dir}", f"run_dir={tmp / 'csft'}", "trainable.mode=full",
                   "optimizer.learning_rate=0.001", *common) == 0
    assert _launch("task=mntp", f"model.init_from={tmp / 'csft'}", f"run_dir={tmp / 'mntp'}", *common) == 0
    assert _launch("task=encode", f"model.init_from={tmp / 'mntp'}", f"run_dir={tmp / 'embed'}",
                   f"data.name={data}", "encode.batch_size=4") == 0
    assert _manifest(tmp / "csft")["outputs"]["lm"]["kind"] == "full"
    base = jaxrec.load_lm(model_dir)
    params = _merged_by_hand(_merged_by_hand(base.params, tmp / "csft"), tmp / "mntp")
    by_hand = LM(base.config, params, base.tokenizer).encode(TINY_TITLES, batch_size=4)
    np.testing.assert_allclose(np.load(tmp / "embed" / "item_embeddings.npy"), by_hand, atol=1e-5)
    changed = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), params, base.params)
    assert max(jax.tree.leaves(changed)) > 1e-4


def test_init_from_what_is_not_a_finished_run_is_a_clear_error(tiny_checkpoints, chain_env, capsys):
    model_dir, _ = tiny_checkpoints("llama-tied-gqa")
    data, tmp = chain_env
    common = [f"data.name={data}", *STAGE]
    (tmp / "plain").mkdir()
    assert _launch("task=mntp", f"model.init_from={tmp / 'plain'}", f"run_dir={tmp / 'a'}", *common) == 1
    assert f"model.init_from {tmp / 'plain'} is not a jaxrec run: it has no manifest.json" in capsys.readouterr().err
    assert _launch("task=mntp", f"model.init_from={tmp / 'nowhere'}", f"run_dir={tmp / 'b'}", *common) == 2
    assert f"model.init_from: {tmp / 'nowhere'} does not exist; expected a finished run directory" in \
        capsys.readouterr().err
    assert not (tmp / "b").exists()  # checked before the run directory is made

    # a run that failed (bad data) is marked so, and cannot be built on
    (tmp / "no-data").mkdir()
    assert _launch("task=csft", f"model.name={model_dir}", f"run_dir={tmp / 'broken'}", *STAGE,
                   f"data.name={tmp / 'no-data'}") == 1
    manifest = _manifest(tmp / "broken")
    assert manifest["status"] == "failed" and "no-data" in manifest["error"]
    assert _launch("task=mntp", f"model.init_from={tmp / 'broken'}", f"run_dir={tmp / 'c'}", *common) == 1
    err = capsys.readouterr().err
    assert f"{tmp / 'broken'}: the csft run has not finished (status failed" in err

    # an encode run trained no LM
    assert _launch("task=encode", f"model.name={model_dir}", f"run_dir={tmp / 'embed'}", f"data.name={data}") == 0
    assert _launch("task=mntp", f"model.init_from={tmp / 'embed'}", f"run_dir={tmp / 'd'}", *common) == 1
    assert "the encode run has no 'lm' output" in capsys.readouterr().err
    with pytest.raises(RunError, match="has no 'lm' output"):
        jaxrec.load_lm(tmp / "embed")


def test_relaunch_on_a_changed_init_from_run_is_refused_and_leaves_the_run_as_it_was(tiny_checkpoints, chain_env,
                                                                                      capsys):
    model_dir, _ = tiny_checkpoints("llama-tied-gqa")
    other_dir, _ = tiny_checkpoints("llama-untied-mha")
    data, tmp = chain_env
    common = [f"data.name={data}", *STAGE]
    assert _launch("task=csft", f"model.name={model_dir}", f"run_dir={tmp / 'csft'}", *common) == 0
    assert _launch("task=csft", f"model.name={other_dir}", f"run_dir={tmp / 'csft-other'}", *common) == 0
    # model.name beside init_from must be the chain's base model
    assert _launch("task=mntp", f"model.name={other_dir}", f"model.init_from={tmp / 'csft'}",
                   f"run_dir={tmp / 'mismatch'}", *common) == 2
    assert "is not the base model of model.init_from's run" in capsys.readouterr().err
    assert _launch("task=mntp", f"model.name={model_dir}", f"model.init_from={tmp / 'csft'}", f"run_dir={tmp / 'mntp'}",
                   *common) == 0
    config_before = (tmp / "mntp" / "config.yaml").read_bytes()
    manifest_before = (tmp / "mntp" / "manifest.json").read_bytes()

    # the same stage on a run of another base model: another config, refused before anything loads
    assert _launch("task=mntp", f"model.init_from={tmp / 'csft-other'}", f"run_dir={tmp / 'mntp'}", *common,
                   "loop.steps=5") == 1
    err = capsys.readouterr().err
    assert "made with another config" in err and "model.init_from (" in err
    assert (tmp / "mntp" / "config.yaml").read_bytes() == config_before
    assert (tmp / "mntp" / "manifest.json").read_bytes() == manifest_before

    # the run it was initialised from trained again, with another setting
    assert _launch("task=csft", f"model.name={model_dir}", f"run_dir={tmp / 'csft2'}", *common,
                   "optimizer.learning_rate=0.01") == 0
    import shutil

    shutil.rmtree(tmp / "csft")
    shutil.copytree(tmp / "csft2", tmp / "csft")
    assert _launch("task=mntp", f"model.name={model_dir}", f"model.init_from={tmp / 'csft'}", f"run_dir={tmp / 'mntp'}",
                   *common, "loop.steps=5") == 1
    err = capsys.readouterr().err
    assert "model.init_from's run changed" in err
    assert (tmp / "mntp" / "config.yaml").read_bytes() == config_before


def test_a_chain_keeps_the_tokenizer_its_first_run_was_given(tiny_checkpoints, chain_env):
    model_dir, _ = tiny_checkpoints("llama-tied-gqa")
    data, tmp = chain_env
    assert _launch("task=csft", f"model.name={model_dir}", f"model.tokenizer={model_dir}", f"run_dir={tmp / 'csft'}",
                   f"data.name={data}", *STAGE) == 0
    assert _manifest(tmp / "csft")["base"]["tokenizer"] == str(model_dir)
    assert _launch("task=encode", f"model.init_from={tmp / 'csft'}", f"run_dir={tmp / 'embed'}", f"data.name={data}") == 0
    # the later stage set no tokenizer: it uses the chain's, and records it as part of the base
    assert _manifest(tmp / "embed")["base"]["tokenizer"] == str(model_dir)
    assert jaxrec.load_lm(tmp / "csft").tokenizer_source == str(model_dir)
