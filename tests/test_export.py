"""Export back to PyTorch: the HF config round trip for every architecture
variant, a LoRA-trained tiny model exported merged (transformers) and as a
PEFT adapter (peft) with the same logits as jaxrec, the real SmolLM2 exported
with its greedy continuations, and the refusals that name the fix."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors import safe_open

import jaxrec
from jaxrec import export, launch
from jaxrec.models.decoder_config import config_from_hf_dict, config_to_hf
from tests.conftest import VARIANTS, random_ids, write_tiny_dataset


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_config_round_trips(variant, tiny_checkpoints):
    directory, _ = tiny_checkpoints(variant)
    config = jaxrec.load_lm(directory).config
    assert config_from_hf_dict(config_to_hf(config)) == config
    with_tokens = config.replace(extra_tokens=3)
    assert config_from_hf_dict(config_to_hf(with_tokens)) == config.replace(vocab_size=config.vocab_size + 3)


def _torch_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


@pytest.fixture(scope="module")
def lora_run(tiny_checkpoints, tmp_path_factory):
    """A tiny LLaMA (untied head) after a few MNTP steps with LoRA on every projection."""
    model_dir, _ = tiny_checkpoints("llama-untied-mha")
    root = tmp_path_factory.mktemp("export")
    data = write_tiny_dataset(root / "data")
    out = root / "mntp"
    settings = ["task=mntp", f"model.name={model_dir}", f"data.name={data}", "data.k_core=1", f"run_dir={out}",
                "batch.size=4", "batch.max_length=32", "loop.steps=4", "optimizer.learning_rate=0.05",
                "trainable.mode=lora", "trainable.lora_rank=4", "trainable.lora_alpha=8"]
    assert launch.main([a for s in settings for a in ("--set", s)]) == 0
    return model_dir, out, root


def test_merged_export_loads_in_transformers_with_jaxrec_logits(lora_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, run, root = lora_run
    out = root / "merged"
    assert export.main(["--run", str(run), "--to", str(out)]) == 0
    trained = jaxrec.load_lm(run)
    base = jaxrec.load_lm(model_dir)
    ids = random_ids(2, 12)
    ours = np.asarray(trained.logits(ids))
    assert np.abs(ours - np.asarray(base.logits(ids))).max() > 1e-3  # LoRA moved the model
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    np.testing.assert_allclose(_torch_logits(model, ids), ours, atol=1e-4)
    assert "lm_head.weight" in dict(model.named_parameters())  # the untied head is written
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer("toy story")["input_ids"] == trained.tokenizer("toy story")["input_ids"]
    assert jaxrec.load_lm(out).config == trained.config  # jaxrec reads its own export back


def test_peft_export_loads_on_its_base_with_jaxrec_logits(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir, run, root = lora_run
    out = root / "peft"
    assert export.main(["--run", str(run), "--to", str(out), "--peft"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(out)).eval()
    ids = random_ids(2, 12, seed=1)
    np.testing.assert_allclose(_torch_logits(model, ids), np.asarray(jaxrec.load_lm(run).logits(ids)), atol=1e-4)


def test_export_refusals_name_the_fix(lora_run, tmp_path, capsys):
    _, run, root = lora_run
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    assert export.main(["--run", str(run), "--to", str(taken)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert export.main(["--run", str(root / "data"), "--to", str(tmp_path / "new")]) == 2
    assert "is not a jaxrec run" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert export.main(["--run", str(run), "--to", str(taken / "file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --to {taken / 'file'} is a file") and err.count("\n") == 1


def test_export_of_a_run_whose_base_model_was_deleted_names_it(tiny_checkpoints, tmp_path, capsys):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_checkpoints("llama-untied-mha")[0], model_dir)
    data = write_tiny_dataset(tmp_path / "data")
    settings = ["task=mntp", f"model.name={model_dir}", f"data.name={data}", "data.k_core=1",
                f"run_dir={tmp_path / 'mntp'}", "batch.size=4", "batch.max_length=32", "loop.steps=1"]
    assert launch.main([a for s in settings for a in ("--set", s)]) == 0
    shutil.rmtree(model_dir)
    capsys.readouterr()
    for extra in ([], ["--peft"]):
        assert export.main(["--run", str(tmp_path / "mntp"), "--to", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert str(model_dir) in err and "no longer exists" in err and err.count("\n") == 1


def test_smollm2_export_keeps_its_greedy_continuations(smollm2_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = jaxrec.load_lm(smollm2_gguf)
    out = export.save_hf_model(lm, tmp_path / "smollm2")
    with safe_open(str(out / "model.safetensors"), "np") as tensors:
        assert "lm_head.weight" not in tensors.keys() and "model.embed_tokens.weight" in tensors.keys()  # tied
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prompt = "The capital of France is"
    ids = lm.tokenizer(prompt)["input_ids"]
    assert tokenizer(prompt)["input_ids"] == ids
    ours = list(ids)
    for _ in range(8):  # greedy decoding with jaxrec, one full forward per token
        ours.append(int(np.argmax(np.asarray(lm.logits(np.array([ours])))[0, -1])))
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0].tolist()
    assert theirs == ours


def test_item_embeddings_and_recommender_export_with_their_id_maps(tiny_checkpoints, tmp_path, capsys):
    from flax import traverse_util
    from safetensors.numpy import load_file

    from jaxrec import runs
    from tests.test_seqrec_task import write_successor_dataset

    model_dir, _ = tiny_checkpoints("qwen2-tied")
    data = write_tiny_dataset(tmp_path / "data")
    embed = tmp_path / "embed"
    assert launch.main(["--set", "task=encode", "--set", f"model.name={model_dir}", "--set", f"data.name={data}",
                        "--set", f"run_dir={embed}"]) == 0
    assert export.main(["--run", str(embed), "--to", str(tmp_path / "embed-out")]) == 0
    description = json.loads((tmp_path / "embed-out" / "description.json").read_text())
    assert description["kind"] == "item_embeddings"
    assert description["item_ids"] == json.loads((embed / "item_ids.json").read_text())
    exported = load_file(str(tmp_path / "embed-out" / "item_embeddings.safetensors"))["item_embeddings"]
    np.testing.assert_array_equal(exported, np.load(embed / "item_embeddings.npy"))
    assert description["shapes"]["item_embeddings"] == list(exported.shape)
    capsys.readouterr()
    assert export.main(["--run", str(embed), "--to", str(tmp_path / "peft-out"), "--peft"]) == 2
    err = capsys.readouterr().err
    assert "--peft exports the LoRA adapters of an LM run" in err and "is not one (its task is encode)" in err

    seqrec = tmp_path / "sasrec"
    settings = ["task=seqrec", f"data.name={write_successor_dataset(tmp_path / 'successor')}", "data.k_core=1",
                f"run_dir={seqrec}", "recommender.backbone.hidden=16", "loop.epochs=1", "evaluation.seeds=[0, 1]"]
    assert launch.main([a for s in settings for a in ("--set", s)]) == 0
    assert export.main(["--run", str(seqrec), "--to", str(tmp_path / "nope")]) == 2
    assert "it trained several seeds: name one of" in capsys.readouterr().err
    assert export.main(["--run", str(seqrec / "seed-1"), "--to", str(tmp_path / "sasrec-out")]) == 0
    description = json.loads((tmp_path / "sasrec-out" / "description.json").read_text())
    trained = runs.trained_recommender(seqrec / "seed-1")
    assert description["spec"] == dataclasses.asdict(trained.spec) and description["item_ids"] == trained.item_ids
    tensors = load_file(str(tmp_path / "sasrec-out" / "recommender.safetensors"))
    np.testing.assert_array_equal(tensors.pop("item_table"), np.load(seqrec / "seed-1" / "item_table.npy"))
    params = traverse_util.flatten_dict(trained.params, sep="/")
    assert set(tensors) == {f"params/{k}" for k in params}
    for key, value in params.items():
        np.testing.assert_array_equal(tensors[f"params/{key}"], value)
