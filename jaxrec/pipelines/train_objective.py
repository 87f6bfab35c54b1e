"""Tasks ``csft``, ``mntp``, ``contrastive`` and ``scft``: train one objective on
a model and dataset, with checkpoints, metrics and resume in the run directory.

mntp / contrastive train on item titles, scft on attribute prompts of the
items, csft on users' chronological title sequences.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jaxrec.config import ConfigError, RunConfig
from jaxrec.data.batches import ShuffledBatches
from jaxrec.data.examples import attribute_text, attribute_view, csft_example, csft_targets, pad_batch
from jaxrec.data.interactions import read_sequences
from jaxrec.data.items import DataError, ItemTable, read_items
from jaxrec.io import sha256_file, write_json_atomic
from jaxrec.models.decoder import Decoder
from jaxrec.models.lm import LM, load_lm
from jaxrec.objectives import model_losses
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.engine import Engine, place_variables
from jaxrec.train.loop import train
from jaxrec.train.optim import make_optimizer


def _identity(lm: LM, config: RunConfig) -> dict:
    """What a checkpoint belongs to: the base weights (by checksum), the task
    and the trainable selection."""
    source = Path(lm.source)
    files = [source] if source.is_file() else sorted(source.glob("*.safetensors"))
    return {
        "model": str(source),
        "sha256": {f.name: sha256_file(f) for f in files},
        "task": config.task,
        "trainable": config.trainable.mode,
    }


def _pad_id(lm: LM) -> int:
    tok = lm.tokenizer
    for candidate in (lm.config.pad_token_id, tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _mask_token_id(lm: LM, config: RunConfig) -> int:
    if config.masking.mask_token_id is not None:
        return config.masking.mask_token_id
    tok = lm.tokenizer
    return int(tok.mask_token_id if tok.mask_token_id is not None else _pad_id(lm))


class _Examples:
    """Builds the batches of one task from the dataset."""

    def __init__(self, config: RunConfig, lm: LM, items: ItemTable):
        self.config, self.tok, self.items = config, lm.tokenizer, items
        self.pad_id = _pad_id(lm)
        spec = config.batch
        if config.task in ("mntp", "contrastive"):
            self.titles = self.tok(items.titles, add_special_tokens=True, truncation=True, max_length=spec.max_length)["input_ids"]
            self.count = len(self.titles)
        elif config.task == "scft":
            self.count = len(items)
        else:
            sequences = read_sequences(config.data.name)
            title = dict(zip(items.ids, items.titles))
            missing = {i for seq in sequences.items for i in seq if i not in title}
            if missing:
                raise DataError(f"{sequences.source}: {len(missing)} item(s) have no title in {items.source}, e.g. {sorted(missing)[:5]}")
            self.sequences = [[title[i] for i in seq] for seq in sequences.items]
            self.pairs = csft_targets(self.sequences)
            self.count = len(self.pairs)

    def batch(self, indices: np.ndarray, position: int) -> dict[str, np.ndarray]:
        spec, task = self.config.batch, self.config.task
        if task in ("mntp", "contrastive"):
            return pad_batch([self.titles[i] for i in indices], self.pad_id, spec.max_length)
        if task == "scft":
            rng = np.random.default_rng([self.config.seed, position])
            views = {}
            for name in ("view_a", "view_b"):
                texts = [
                    attribute_text(attribute_view({"title": self.items.titles[i], **self.items.attributes[i]}, rng, spec.attribute_drop), spec.domain)
                    for i in indices
                ]
                ids = self.tok(texts, truncation=True, max_length=spec.max_length)["input_ids"]
                padded = pad_batch(ids, self.pad_id, spec.max_length)
                views[f"{name}_input_ids"], views[f"{name}_attention_mask"] = padded["input_ids"], padded["attention_mask"]
            return views
        return self.csft_batch([tuple(self.pairs[i]) for i in indices])

    def csft_batch(self, pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        spec = self.config.batch
        ids, targets = zip(*(
            csft_example(self.tok, self.sequences[u][max(0, t - spec.max_history) : t], self.sequences[u][t], spec.max_length)
            for u, t in pairs
        ))
        padded = pad_batch(list(ids), self.pad_id, spec.max_length, side="left")
        mask = np.zeros_like(padded["input_ids"])
        for row, target in enumerate(targets):
            mask[row, mask.shape[1] - len(target) :] = target[-mask.shape[1] :]
        return {**padded, "target_mask": mask}

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """CSFT: each user's validation target; other tasks: a fixed sample of items."""
        size, count = self.config.batch.size, self.config.batch.eval_batches
        if self.config.task == "csft":
            pairs = [(u, len(s) - 2) for u, s in enumerate(self.sequences) if len(s) >= 3]
            return [self.csft_batch(pairs[i : i + size]) for i in range(0, min(len(pairs), size * count) - size + 1, size)]
        order = np.random.default_rng([self.config.seed, 10**6]).permutation(self.count)
        return [self.batch(order[i * size : (i + 1) * size], 10**6 + i) for i in range(min(count, self.count // size))]


def _objective(config: RunConfig, model: Decoder, lm: LM):
    specials = tuple(int(i) for i in lm.tokenizer.all_special_ids)
    mask_id = _mask_token_id(lm, config)
    if config.task == "csft":
        return model_losses.make_csft(model)
    if config.task == "mntp":
        return model_losses.make_mntp(model, config.masking, mask_id, specials)
    if config.task == "contrastive":
        if config.contrastive.views == "dropout" and not model.config.attention_dropout:
            raise ConfigError(
                "contrastive.views=dropout needs dropout to differ between the two views: "
                "set model.attention_dropout (LLM2Rec uses 0.2) or contrastive.views=masking"
            )
        return model_losses.make_contrastive(model, config.contrastive, config.masking, mask_id, specials)
    return _scft(model)


def _scft(model: Decoder):
    init, loss = model_losses.make_scft(model)

    def renamed(variables, params, batch, rng):
        views = {
            "view_a_ids": batch["view_a_input_ids"], "view_a_mask": batch["view_a_attention_mask"],
            "view_b_ids": batch["view_b_input_ids"], "view_b_mask": batch["view_b_attention_mask"],
        }
        return loss(variables, params, views, rng)

    return init, renamed


def run(config: RunConfig, run_dir: Path, log=print) -> dict:
    mode = config.trainable.mode
    lm = load_lm(
        config.model.name, config.model.dtype, param_dtype="float32" if mode != "lora" else config.model.dtype,
        tokenizer=config.model.tokenizer, attention_dropout=config.model.attention_dropout,
    )
    if lm.tokenizer is None:
        raise ConfigError(f"{lm.source} has no tokenizer: set model.tokenizer")
    log(f"model: {lm}")
    items = read_items(config.data.name)
    examples = _Examples(config, lm, items)
    log(f"data: {examples.count} {config.task} examples from {items.source}")

    model = Decoder(lm.config.replace(lora=config.trainable.lora_spec()))
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = mesh_lib.rules_of(config.mesh)
    log(f"mesh: {dict(mesh.shape)} over {jax.device_count()} device(s), {jax.process_count()} process(es)")
    variables = place_variables(model, lm.params, mesh, rules, jax.random.key(config.seed))
    optimizer = make_optimizer(config.optimizer, config.loop.steps)
    engine = Engine(model, variables, _objective(config, model, lm), config.trainable.patterns(), optimizer, mesh, config.seed)
    trainable = sum(x.size for x in jax.tree.leaves(engine.state.trainable))
    log(f"trainable: {trainable:,} parameters ({mode})")

    data = ShuffledBatches(
        examples.count, config.batch.size, examples.batch, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    summary = train(engine, data, config.loop, run_dir, _identity(lm, config), eval_batches=examples.eval_batches, log=log)
    summary.update(task=config.task, trainable_parameters=trainable)
    write_json_atomic(run_dir / "summary.json", summary)
    log(f"done: {summary}")
    return summary
