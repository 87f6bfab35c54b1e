"""Task ``seqrec``: train a sequential recommender (SASRec, GRU4Rec or BERT4Rec
on ID, frozen-LLM or combined item representations), early-stop on a
validation metric, and evaluate the best state on the test split.

Per seed, the run directory (``seed-<n>/`` when several seeds are configured)
gets checkpoints, the best state under ``best/``, ``metrics.jsonl`` and
``test_metrics.json``, and the run's outputs (named ``seed-<n>/<name>`` with
several seeds): ``recommender`` (the tested state's weights and spec, which the
LLM-SRec teacher reads), ``item_table`` + ``item_ids`` (the trained item
vectors, which a later RAT run can align to). The summary holds each seed's
test metrics and their mean and standard deviation.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jaxrec import runs
from jaxrec.config import non_default_fields
from jaxrec.data.batches import IndexBatches
from jaxrec.data.prep import SeqData
from jaxrec.errors import ConfigError, RunError
from jaxrec.runs import Run
from jaxrec.seqrec.evaluate import SplitRanking, batched, best_state_on_test, seeds_summary
from jaxrec.seqrec.histories import training_examples, training_user_items, trim_padding, trimmed_width
from jaxrec.seqrec.item_vectors import RowTransform, frozen_matrix_transform
from jaxrec.seqrec.probe import ProbeTargets
from jaxrec.seqrec.recommender import (Recommender, adapter_output_width, align_slots, backbone_class,
                                       counts_align_targets, init_variables, item_slots,
                                       make_objective, maps_batch_items)
from jaxrec.seqrec.spec import EvalSpec, ItemsSpec, RecommenderSpec, flat_names, ranking_monitor
from jaxrec.tasks.specs import Task, TrainingConfig
from jaxrec.train.session import TrainingSession, gather, trainable_count


@dataclasses.dataclass
class SeqrecConfig(TrainingConfig):
    task: str = "seqrec"
    recommender: RecommenderSpec = dataclasses.field(default_factory=RecommenderSpec)
    evaluation: EvalSpec = dataclasses.field(default_factory=EvalSpec)

    def __post_init__(self):
        self.loop = ranking_monitor(self.loop, self.evaluation)


def frozen_item_rows(spec: ItemsSpec, item_ids: list[str]) -> tuple[np.ndarray, RowTransform]:
    """The raw LLM rows of the catalogue (``item_ids`` without its padding row 0) from
    ``recommender.items.embeddings``, and the conditioning (and PCA) fitted on them."""
    raw = runs.item_embeddings(spec.embeddings, item_ids)[1:]
    return raw, frozen_matrix_transform(raw, spec.conditioning, spec.pca)


def frozen_item_table(spec: ItemsSpec, item_ids: list[str]) -> np.ndarray | None:
    """The frozen LLM matrix [len(item_ids), d] as the recommender reads it (conditioned,
    PCA-reduced; row 0, padding, zero), or None for ID items."""
    if not spec.uses_llm:
        return None
    raw, transform = frozen_item_rows(spec, item_ids)
    rows = transform(raw)
    return np.concatenate([np.zeros((1, rows.shape[1]), np.float32), rows])


def id_probe_targets(config: SeqrecConfig, run_dir, seed: int) -> tuple[SeqData, ProbeTargets]:
    """The data of a finished ID recommender's run and what the linear probe fits to
    (:class:`~jaxrec.seqrec.probe.ProbeTargets`): the item vectors of its ``seed``."""
    if config.recommender.items.uses_llm:
        raise RunError(f"{run_dir}: the probe needs an ID recommender's run (recommender.items.kind: id), "
                       f"not one with items {config.recommender.items.kind!r}")
    data = config.data.load(config.seed, log=lambda *_: None)
    return data, ProbeTargets.of(data, runs.item_table(run_dir, [str(i) for i in data.item_ids], seed))


def _align_items(config: SeqrecConfig, item_ids: list[str], seed: int) -> np.ndarray | None:
    """The ID model's item vectors RAT aligns to: of the same seed when that run trained several."""
    location = config.recommender.alignment.to
    if location is None:
        return None
    table = runs.item_table(location, item_ids, seed)
    width = adapter_output_width(config.recommender)
    if table.shape[1] != width:
        raise ConfigError(f"recommender.alignment.to: its item vectors are {table.shape[1]}-wide but the adapter "
                          f"outputs {width}; train the ID model with backbone.hidden {width}")
    return table


class _Setup:
    """What every seed shares: the model, the examples, the frozen item
    matrices, the evaluation splits and the jitted scoring functions."""

    def __init__(self, config: SeqrecConfig, data: SeqData):
        spec = self.spec = config.recommender
        self.config, self.data = config, data
        self.item_ids = [str(i) for i in data.item_ids]
        self.llm_items = frozen_item_table(spec.items, self.item_ids)
        self.model = Recommender(
            spec, data.num_items, 0 if self.llm_items is None else self.llm_items.shape[1],
            0 if spec.alignment.to is None else adapter_output_width(spec),
        )
        self.backbone = backbone_class(spec)
        max_history = spec.backbone.max_history
        self.examples = training_examples(data, max_history, self.backbone.example_kind(spec.examples))
        self.count = len(self.examples) * self.backbone.training_copies(spec.backbone)
        self.training_items = training_user_items(data)  # BCE negatives: never a held-out interaction
        self.ranking = SplitRanking(data, config.evaluation, max_history - self.backbone.readout_slots)
        self.user_fn = jax.jit(lambda v, h, items: self.model.apply(v, h, items, method=Recommender.user_vectors))
        self.item_fn = jax.jit(lambda v: self.model.apply(v, method=Recommender.items))

    def evaluate(self, variables, part: str, seed: int, diagnostics: bool) -> dict:
        items = self.item_fn(variables)
        users = lambda rows: batched(lambda h: self.user_fn(variables, h[:, :trimmed_width(h)], items), rows,
                                     batch_size=self.config.evaluation.batch_size)
        return self.ranking(users, np.asarray(items), part, seed, diagnostics)

    def batch(self, indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Training rows ``indices`` of ``count`` (indices past the examples: the backbone's further visits)."""
        rows = indices % len(self.examples)
        batch = trim_padding({"history": self.examples.history[rows], "targets": self.examples.targets[rows],
                              **self.backbone.batch_fields(indices, len(self.examples))})
        if self.spec.loss == "bce":
            targets = batch["targets"]
            # negatives where a target is scored, elsewhere the padding item, so a
            # batch's distinct items stay few (see item_slots)
            scored = targets > 0
            users = np.broadcast_to(self.examples.users[rows][:, None], targets.shape)[scored]
            negatives = np.zeros((*targets.shape, self.spec.negatives), np.int32)
            negatives[scored] = self.training_items.sample(rng, users, self.spec.negatives, distinct=False)
            batch["negatives"] = negatives
            slots = item_slots(batch, self.data.num_items) if maps_batch_items(self.spec) else None
            if slots is not None:
                batch["item_slots"] = slots
        if counts_align_targets(self.spec):
            batch["align_slots"] = align_slots(batch)
        return batch


def _identity(config: SeqrecConfig, seed: int) -> dict:
    # only the settings away from their defaults, under their flat names: an option
    # added later at its default, or sections, leave earlier runs' checkpoints resumable
    return {"task": "seqrec", "data": str(config.data.name), "seed": seed,
            "recommender": flat_names(non_default_fields(config.recommender))}


def train_and_test(setup: _Setup, seed: int, run: Run, subdir: str = "", log=print) -> dict:
    """Train and test one seed in ``run.path / subdir``; its outputs are named ``subdir/<name>``."""
    config = setup.config
    run_dir = run.path / subdir if subdir else run.path
    session = TrainingSession(config.mesh, config.optimizer, config.loop, seed)
    align_items = _align_items(config, setup.item_ids, seed)
    variables = session.replicate(init_variables(setup.model, jax.random.key(seed), setup.llm_items, align_items))
    block, blocks = session.batch_block
    batches = IndexBatches(
        setup.count, config.batch.size, setup.batch, seed=seed, process_index=block, process_count=blocks,
        with_replacement=config.batch.with_replacement,
    )
    engine = session.engine(setup.model, variables, make_objective(setup.model, setup.data.cold), ("^params/",), batches.steps_per_epoch)
    trainable = trainable_count(engine)
    mesh = session.mesh
    log(f"seed {seed}: {setup.count} training examples ({batches.steps_per_epoch} steps per epoch), "
        f"{trainable:,} trainable parameters, batches split over {mesh.size} {mesh.devices.flat[0].platform} device(s)")

    identity = _identity(config, seed)
    validate = lambda: setup.evaluate(engine.variables(), "valid", seed, diagnostics=False)["full"]
    fitted = session.fit(engine, batches, run_dir, identity, validate=validate, log=log,
                         count_tokens=lambda batch: int(np.count_nonzero(batch["history"])))
    summary = fitted.summary
    summary["epochs"] = round(summary["steps"] / batches.steps_per_epoch, 2)
    epochs_timed = summary["timed_steps"] / batches.steps_per_epoch
    summary["seconds_per_epoch"] = round(summary["training_seconds"] / epochs_timed, 3) if epochs_timed else None
    test = best_state_on_test(fitted, lambda: setup.evaluate(engine.variables(), "test", seed, diagnostics=True), log,
                           f"seed {seed}: ")
    result = {"seed": seed, "training": summary, "test": test}
    inside = lambda name: f"{subdir}/{name}" if subdir else name  # output names and files alike
    weights = gather(engine.variables())
    table = np.asarray(setup.item_fn(engine.variables()))[1:]
    run.save_json(inside("test_metrics"), inside("test_metrics.json"), result)
    run.save_arrays(inside("recommender"), inside("recommender.safetensors"), weights,
                    spec=dataclasses.asdict(config.recommender), seed=seed, num_items=setup.data.num_items,
                    from_step=fitted.best_step or summary["steps"])
    run.save_npy(inside("item_table"), inside("item_table.npy"), table)
    run.save_json(inside("item_ids"), inside("item_ids.json"), setup.item_ids[1:])
    log(f"seed {seed}: test " + "  ".join(f"{k} {v:.4f}" for k, v in test["full"].items()))
    return result


def run(config: SeqrecConfig, run: Run, log=print) -> dict:
    data = config.data.load(config.seed, log)
    seeds = config.evaluation.seeds or [config.seed]
    setup = _Setup(config, data)
    results = []
    for seed in seeds:
        results.append(train_and_test(setup, seed, run, f"seed-{seed}" if len(seeds) > 1 else "", log))
    summary = {"task": "seqrec", "model": config.recommender.backbone.model, "items": config.recommender.items.kind,
               **seeds_summary(results)}
    for section, metrics in summary["over_seeds"].items():
        log(f"test ({section}, {len(seeds)} seed(s)): " + "  ".join(
            f"{name} {v['mean']:.4f}" + (f" ± {v['std']:.4f}" if len(seeds) > 1 else "") for name, v in metrics.items()))
    return summary


TASK = Task("seqrec", SeqrecConfig, run, "SASRec / GRU4Rec / BERT4Rec on ID or frozen-LLM items, early-stopped and "
            "tested (LLM2Rec's and LLMEmb's downstream recommenders)", tests_recommender=True, export="recommender")
