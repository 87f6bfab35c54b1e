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
from jaxrec.data.pipeline import GrainBatches
from jaxrec.data.bucketing import pack_sequences, pad_sequences
from jaxrec.data.examples import attribute_text, attribute_view, csft_example, csft_targets, pad_batch
from jaxrec.data.prep import SeqData, load_dataset
from jaxrec.io import write_json_atomic
from jaxrec.models.decoder import Decoder
from jaxrec.models.lm import LM, load_lm
from jaxrec.objectives import model_losses
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.engine import Engine, place_variables
from jaxrec.train.loop import mean_over_batches, train
from jaxrec.train.optim import make_optimizer


def _identity(lm: LM, config: RunConfig) -> dict:
    """What a checkpoint belongs to: the base weights (by checksum), the task
    and the trainable selection."""
    return {**lm.identity(), "task": config.task, "trainable": config.trainable.mode}


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
    """Builds the examples and batches of one task from the preprocessed dataset."""

    def __init__(self, config: RunConfig, lm: LM, data: SeqData, row_multiple: int = 1):
        self.config, self.tok, self.row_multiple = config, lm.tokenizer, row_multiple
        self.titles_text, self.attributes = data.titles[1:], data.attributes[1:]
        self.pad_id = _pad_id(lm)
        spec = config.batch
        if config.task in ("mntp", "contrastive"):
            self.titles = self.tok(self.titles_text, add_special_tokens=True, truncation=True, max_length=spec.max_length)["input_ids"]
            self.count = len(self.titles)
        elif config.task == "scft":
            self.count = len(self.titles_text)
        else:
            self.sequences = [[data.titles[i] for i in data.sequence(u)] for u in range(data.num_users)]
            self.pairs = csft_targets(self.sequences)
            self.count = len(self.pairs)

    def example(self, index: int, rng: np.random.Generator):
        """One example, drawn with Grain's per-example generator (SCFT views)."""
        if self.config.task in ("mntp", "contrastive"):
            return self.titles[index]
        if self.config.task == "scft":
            spec = self.config.batch
            attributes = {"title": self.titles_text[index], **self.attributes[index]}
            return tuple(attribute_text(attribute_view(attributes, rng, spec.attribute_drop), spec.domain) for _ in range(2))
        user, position = self.pairs[index]
        return self.csft_example(int(user), int(position))

    def csft_example(self, user: int, position: int) -> tuple[list[int], list[int]]:
        spec = self.config.batch
        history = self.sequences[user][max(0, position - spec.max_history) : position]
        return csft_example(self.tok, history, self.sequences[user][position], spec.max_length)

    def collate(self, examples) -> dict[str, np.ndarray]:
        spec, task = self.config.batch, self.config.task
        if task in ("mntp", "contrastive"):
            if spec.pack:  # rows rounded to the batch sharding, so they split evenly over devices
                return pack_sequences(list(examples), spec.max_length, self.pad_id, spec.max_length, self.row_multiple)
            return pad_batch(list(examples), self.pad_id, spec.max_length)
        if task == "scft":
            batch = {}
            for view, texts in zip(("view_a", "view_b"), zip(*examples)):
                ids = self.tok(list(texts), truncation=True, max_length=spec.max_length)["input_ids"]
                padded = pad_batch(ids, self.pad_id, spec.max_length)
                batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"] = padded["input_ids"], padded["attention_mask"]
            return batch
        ids, targets = zip(*examples)
        padded = pad_batch(list(ids), self.pad_id, spec.max_length, side="left")
        target_mask, _ = pad_sequences(targets, padded["input_ids"].shape[1], 0, side="left")
        return {**padded, "target_mask": target_mask}

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """CSFT: each user's validation target; other tasks: a fixed sample of items."""
        size, count = self.config.batch.size, self.config.batch.eval_batches
        if self.config.task == "csft":
            examples = [self.csft_example(u, len(s) - 2) for u, s in enumerate(self.sequences) if len(s) >= 3]
        else:
            rng = np.random.default_rng([self.config.seed, 1])
            order = rng.permutation(self.count)[: size * count]
            examples = [self.example(int(i), rng) for i in order]
        return [self.collate(examples[i : i + size]) for i in range(0, min(len(examples), size * count) - size + 1, size)]


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
    return model_losses.make_scft(model)


def run(config: RunConfig, run_dir: Path, log=print) -> dict:
    if config.batch.pack and (config.task not in ("mntp", "contrastive") or jax.process_count() > 1):
        raise ConfigError("batch.pack works for the mntp and contrastive tasks in a single process "
                          "(packed rows differ in number between processes); set batch.pack=false")
    mode = config.trainable.mode
    lm = load_lm(
        config.model.name, config.model.dtype, param_dtype="float32" if mode != "lora" else config.model.dtype,
        tokenizer=config.model.tokenizer, attention_dropout=config.model.attention_dropout,
    )
    if lm.tokenizer is None:
        raise ConfigError(f"{lm.source} has no tokenizer: set model.tokenizer")
    log(f"model: {lm}")
    model = Decoder(lm.config.replace(lora=config.trainable.lora_spec()))
    mesh = mesh_lib.make_mesh(config.mesh)
    rules = mesh_lib.rules_of(config.mesh)
    data = load_dataset(config.data.name, config.data.prep(config.seed))
    row_multiple = int(np.prod([mesh.shape[axis] for axis in rules.get("batch", ())]))
    examples = _Examples(config, lm, data, row_multiple)
    log(f"data: {data.num_users} users, {data.num_items} items; {examples.count} {config.task} examples")

    log(f"mesh: {dict(mesh.shape)} over {jax.device_count()} device(s), {jax.process_count()} process(es)")
    variables = place_variables(model, lm.params, mesh, rules, jax.random.key(config.seed))

    batches = GrainBatches(
        examples.count, config.batch.size, examples.example, examples.collate, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(), workers=config.batch.workers,
    )
    optimizer = make_optimizer(config.optimizer, config.loop.in_steps(batches.steps_per_epoch).steps)
    engine = Engine(
        model, variables, _objective(config, model, lm), config.trainable.patterns(), optimizer, mesh, config.seed,
        batch_axes=rules.get("batch", ()),
    )
    trainable = sum(x.size for x in jax.tree.leaves(engine.state.trainable))
    log(f"trainable: {trainable:,} parameters ({mode})")

    validate = mean_over_batches(engine, examples.eval_batches)
    summary = train(engine, batches, config.loop, run_dir, _identity(lm, config), validate=validate, log=log)
    summary.update(task=config.task, trainable_parameters=trainable)
    if jax.process_index() == 0:
        write_json_atomic(run_dir / "summary.json", summary)
    log(f"done: {summary}")
    return summary
