"""``python -m jaxrec.export``: a run's trained model back to the PyTorch world.

- ``--merge-lora`` (the default): an HF model directory that ``transformers``
  loads with ``AutoModelForCausalLM.from_pretrained``: ``config.json`` (which
  jaxrec's reader reads back to the same decoder config), ``model.safetensors``
  through the inverse of the conversion table with every LoRA merged, and the
  tokenizer files (a GGUF-derived tokenizer saved as an HF fast tokenizer).
  Tokens a run added (LLM-SRec's) become ordinary vocabulary rows and
  tokenizer entries. Tied embeddings are written without an ``lm_head``.
- ``--peft``: a PEFT LoRA adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``) for the run's base, an HF model directory,
  which ``peft.PeftModel.from_pretrained`` loads on top of it.
- an ``encode`` run: its item vectors, and a ``seqrec`` run (or one seed
  directory of it): its recommender weights and trained item table, each as
  safetensors with a ``description.json`` (shapes, item id map, spec).

The output directory is written whole or not at all.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jaxrec import runs
from jaxrec.errors import ConfigError, DataError, RunError
from jaxrec.io import atomic_dir
from jaxrec.models.convert import params_to_hf, rules_for
from jaxrec.models.decoder_config import config_to_hf, load_hf_config
from jaxrec.registry import TASKS

FILLER_TOKEN = "<|jaxrec_unused_{}|>"
"""Names for the unused ids between a tokenizer's last token and the model's vocabulary size (padded vocabularies),
so that added tokens keep their ids."""


def _with_added_rows(lm):
    """(config, params) with the added token rows appended to the vocabulary;
    an untied output head gets zero rows for them (they were input-only)."""
    config, params = lm.config, dict(lm.params)
    extra = config.extra_tokens
    if not extra:
        return config, params
    params["embed"] = {"embedding": np.concatenate([np.asarray(params["embed"]["embedding"]),
                                                    np.asarray(params.pop("extra_embedding"))])}
    if not config.tie_word_embeddings:
        kernel = np.asarray(params["lm_head"]["kernel"])
        params["lm_head"] = {"kernel": np.concatenate([kernel, np.zeros((kernel.shape[0], extra), kernel.dtype)], 1)}
    return config.replace(vocab_size=config.vocab_size + extra, extra_tokens=0), params


def _tokenizer_with(tokenizer, vocab_size: int, added: list[str]):
    """A copy of ``tokenizer`` whose ``added`` tokens get the ids from ``vocab_size`` on."""
    tokenizer = copy.deepcopy(tokenizer)
    if added:
        fillers = [FILLER_TOKEN.format(i) for i in range(vocab_size - len(tokenizer))]
        if len(tokenizer) > vocab_size:
            raise RunError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's {vocab_size} rows; "
                           "its added tokens cannot keep their ids")
        tokenizer.add_tokens(fillers + added, special_tokens=True)
        ids = tokenizer.convert_tokens_to_ids(added)
        if ids != list(range(vocab_size, vocab_size + len(added))):
            raise RunError(f"the added tokens {added} got ids {ids}, not {vocab_size}.. as the model has them")
    return tokenizer


def save_hf_model(lm, out: str | Path, added_tokens: list[str] | None = None) -> Path:
    """``lm`` as an HF model directory at ``out``; ``added_tokens`` names the
    rows it added (default ``<|jaxrec_added_i|>``)."""
    config, params = _with_added_rows(lm)
    added = added_tokens or [f"<|jaxrec_added_{i}|>" for i in range(lm.config.extra_tokens)]
    if len(added) != lm.config.extra_tokens:
        raise ValueError(f"{len(added)} names for {lm.config.extra_tokens} added tokens")
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
        save_file(dict(params_to_hf(config, params)), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if lm.tokenizer is not None:
            _tokenizer_with(lm.tokenizer, lm.config.vocab_size, added).save_pretrained(str(tmp))
    return Path(out)


def _hf_modules(config) -> dict[tuple[str, ...], str]:
    """Flax path of each projection -> its HF module name (``model.layers.{layer}.self_attn.q_proj``)."""
    return {rule.path[:-1]: rule.hf_key.removesuffix(".weight") for rule in rules_for(config)
            if rule.path[-1] == "kernel" and rule.path[0] == "layers"}


def save_peft_adapter(run_dir: str | Path, out: str | Path) -> Path:
    """The LoRA factors a run trained, as a PEFT adapter for the run's base model."""
    run = runs.open_run(run_dir, "--run")
    meta = run.output("lm")
    if "lora" not in meta:
        raise RunError(f"{run_dir} trained no LoRA adapters (its LM output holds {meta['kind']}); "
                       "export it with --merge-lora")
    if run.manifest["init_from"]:
        raise RunError(f"{run_dir} continues {run.manifest['init_from']}: its adapters apply to that run's merged "
                       "model, not to a base PEFT knows; export it with --merge-lora")
    if int(meta.get("extra_tokens", 0)):
        raise RunError(f"{run_dir} added tokens, which a LoRA adapter cannot carry; export it with --merge-lora")
    base = Path(run.manifest["base"]["model"])
    if not base.exists():
        raise RunError(f"the base model of {run_dir}, {base}, no longer exists; put it back there to export")
    if not (base.is_dir() and (base / "config.json").is_file()):
        raise RunError(f"the base of {run_dir} is {base}, not an HF model directory; a PEFT adapter needs one "
                       "(export with --merge-lora instead)")
    config = load_hf_config(base)  # the module names; the base weights are not needed
    lora = traverse_util.flatten_dict(traverse_util.unflatten_dict(load_file(str(run.file("lm"))), sep="/")["lora"])
    modules, spec = _hf_modules(config), meta["lora"]
    rank, tensors, targets = int(spec["rank"]), {}, set()
    for path in sorted({p[:-1] for p in lora}):
        a, b = lora[path + ("a",)], lora[path + ("b",)]  # [layers, *in, rank], [layers, rank, *out]
        name = modules[path]
        targets.add(name.rsplit(".", 1)[-1])
        for layer in range(a.shape[0]):
            prefix = "base_model.model." + name.format(layer=layer)
            tensors[prefix + ".lora_A.weight"] = np.ascontiguousarray(a[layer].reshape(-1, rank).T)
            tensors[prefix + ".lora_B.weight"] = np.ascontiguousarray(b[layer].reshape(rank, -1).T)
    adapter = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base.absolute()),
               "r": rank, "lora_alpha": float(spec["alpha"]), "lora_dropout": 0.0, "bias": "none",
               "target_modules": sorted(targets), "fan_in_fan_out": False, "inference_mode": True}
    with atomic_dir(out) as tmp:
        (tmp / "adapter_config.json").write_text(json.dumps(adapter, indent=2) + "\n")
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return Path(out)


def _write_arrays(out: str | Path, name: str, tensors: dict[str, np.ndarray], description: dict) -> Path:
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    description = {**description, "file": name, "shapes": {k: list(v.shape) for k, v in tensors.items()}}
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        (tmp / "description.json").write_text(json.dumps(description, indent=2) + "\n")
    return Path(out)


def save_item_embeddings(run_dir: str | Path, out: str | Path) -> Path:
    """An encode run's item vectors: ``item_embeddings.safetensors`` (row i is item_ids[i]) and ``description.json``."""
    run = runs.open_run(run_dir, "--run")
    entry = run.output("item_embeddings")
    item_ids = json.loads(run.file("item_ids").read_text())
    return _write_arrays(out, "item_embeddings.safetensors", {"item_embeddings": np.load(run.file("item_embeddings"))},
                         {"kind": "item_embeddings", "run": str(Path(run_dir).absolute()), "item_ids": item_ids,
                          "pooling": entry.get("pooling"), "mask": entry.get("mask"),
                          "model": run.manifest.get("base", {}).get("model"), "rows": "row i is the item item_ids[i]"})


def save_recommender(run_dir: str | Path, out: str | Path) -> Path:
    """A seqrec run's recommender (its tested state): ``recommender.safetensors``
    with every parameter under its Flax path (joined by '/') and the trained item
    table, and ``description.json`` with the recommender spec and the item id of
    each table row."""
    trained = runs.trained_recommender(run_dir, "--run")
    run = runs.open_run(run_dir, "--run")
    tensors = {f"params/{k}": v for k, v in traverse_util.flatten_dict(trained.params, sep="/").items()}
    tensors["item_table"] = np.load(run.file("item_table"))
    return _write_arrays(out, "recommender.safetensors", tensors,
                         {"kind": "recommender", "run": str(Path(run_dir).absolute()), "spec": dataclasses.asdict(trained.spec),
                          "item_ids": trained.item_ids,
                          "rows": "item_table row 0 is padding; row i (i >= 1) is the item item_ids[i - 1]",
                          "layout": "Flax parameters: Dense kernels are [in, out] (a torch.nn.Linear weight is "
                                    "their transpose); stacked blocks carry a leading layer axis"})


def save_trained_lm(run_dir: str | Path, out: str | Path) -> Path:
    """A run's trained LM (its base with everything trained along its chain) as an HF model directory."""
    names = _token_names(run_dir)  # also checks that run_dir is a finished run with a trained LM
    return save_hf_model(runs.load_lm(run_dir), out, names)


EXPORTERS = {"lm": save_trained_lm, "item_embeddings": save_item_embeddings, "recommender": save_recommender}
"""What a task's runs export as, by ``Task.export``."""


def export_run(run_dir: str | Path, out: str | Path, peft: bool = False) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--to {out} is a file; an export is a directory: choose a new one")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--to {out} exists and is not empty; choose a new directory")
    task = runs.open_run(run_dir, "--run").task
    kind = TASKS[task].export if task in TASKS else "lm"
    if peft:
        if kind != "lm":
            raise ConfigError(f"--peft exports the LoRA adapters of an LM run; {run_dir} is not one (its task is "
                              f"{task}): export it without --peft")
        return save_peft_adapter(run_dir, out)
    return EXPORTERS[kind](run_dir, out)


def _token_names(run_dir: str | Path) -> list[str] | None:
    """The names of the tokens added along a run's chain (the run that added them recorded them)."""
    run = runs.open_run(run_dir, "--run")
    while True:
        names = run.output("lm").get("token_names")
        if names or not run.manifest["init_from"]:
            return names
        run = runs.open_run(run.manifest["init_from"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrec.export",
        description="Export a run for PyTorch. An LM run (csft, mntp, contrastive, scft, llmsrec): an HF model "
                    "directory with every LoRA merged and added tokens in the vocabulary (default), or a PEFT LoRA "
                    "adapter for its base (--peft). An encode run: its item embeddings; a seqrec run: its "
                    "recommender weights and item table; each as safetensors with description.json.")
    parser.add_argument("--run", required=True, help="a finished run directory (a chain of LM runs, through "
                        "init_from, exports as one model; a seqrec run of several seeds: one seed-<n> directory)")
    parser.add_argument("--to", required=True, help="the directory to write (new or empty)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--merge-lora", action="store_true", help="an HF model directory, LoRA merged (the default)")
    kind.add_argument("--peft", action="store_true", help="a PEFT adapter directory for the run's base model "
                      "(an HF directory; the run must not continue another run or add tokens)")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run, args.to, peft=args.peft)
    except (ConfigError, DataError, OSError) as err:  # DataError: a run or its files are not as expected
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.run} -> {out}" + (" (PEFT adapter)" if args.peft else " (HF model directory)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
