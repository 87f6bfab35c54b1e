"""Config sections that several tasks share, and the config classes that
tasks extend with their own sections."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Literal

from jaxrec.inputs import InputField, input_fields, value_at
from jaxrec.errors import ConfigError, DataError
from jaxrec.train.engine import TrainableSpec
from jaxrec.train.loop import LoopSpec
from jaxrec.train.mesh import MeshSpec
from jaxrec.train.optim import OptimizerSpec

DEFAULT_MODEL = "smollm2-135m"


@dataclasses.dataclass(frozen=True)
class Task:
    """A task as the launcher runs it: ``run(config, run, log) -> summary``. The files
    and runs it reads are declared by its config's sections (``INPUTS``)."""

    name: str
    config: type
    run: Callable
    help: str
    tests_recommender: bool = False
    """Its runs hold a recommender's test results (``runs.recommender_results``): reports compare them."""
    export: Literal["lm", "item_embeddings", "recommender"] = "lm"
    """What ``python -m jaxrec.export`` writes of its runs: the trained LM (an HF model
    directory), the item vectors, or the recommender's weights and item table."""
    packs_examples: bool = False
    """Its examples can be packed several to a row (``batch.pack``)."""


def require_positive(spec, *names: str) -> None:
    for name in names:
        if getattr(spec, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(spec, name)}")


def require_rate(name: str, value: float | None) -> None:
    """A dropout-like share: in [0, 1)."""
    if value is not None and not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value}")


@dataclasses.dataclass
class ModelSpec:
    INPUTS = {"init_from": InputField("a finished run directory", run=True),
              "name": InputField("a named model asset, an HF model directory, a .gguf file or a run directory",
                                 run=True, asset=True),
              "tokenizer": InputField("an HF model directory with tokenizer files or a .gguf file")}

    name: str | None = None
    """A named asset (``smollm2-135m``, the default), an HF model directory, a
    LLaMA GGUF file; or a finished run directory, whose trained LM is loaded."""
    init_from: str | None = None
    """A finished run whose trained LM this run starts from (its base model plus
    LoRA merged / full weights / added token rows, along its whole chain).
    ``name``, if also set, must be that run's base model."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    tokenizer: str | None = None
    """Overrides the tokenizer that comes with the model (HF directory or GGUF file)."""
    attention_dropout: float | None = None
    """Attention dropout while training (default: the checkpoint's, usually 0)."""
    remat: Literal["matmuls", "none", "full"] = "matmuls"
    """What each layer keeps for the backward pass while training: "matmuls"
    (the projections' and MLP's outputs; the rest is recomputed), "none"
    (everything), "full" (only the layer's input: least memory, slowest)."""
    matmul_dtype: Literal["float32", "bfloat16"] | None = None
    """The projections' and MLP's operands rounded to this dtype, their products
    accumulated in ``dtype`` (default: ``dtype``). "bfloat16" under float32 is
    mixed precision: about twice as fast products on CPUs with AVX512-BF16
    (Zen 4, Sapphire Rapids), slower ones on CPUs without."""

    def __post_init__(self):
        require_rate("attention_dropout", self.attention_dropout)

    def load(self, **runtime):
        """The LM: ``init_from``'s trained LM, else ``name`` (a base model or a run). Tokenizer files
        that do not load are an error naming the setting that chose them."""
        from jaxrec.models.tokenizer import TokenizerError

        try:
            return self._load(**runtime)
        except TokenizerError as err:
            if self.tokenizer is not None:
                raise ConfigError(f"model.tokenizer: {err}") from None
            raise ConfigError(f"{'model.init_from' if self.init_from else 'model.name'}: {err}; set model.tokenizer "
                              "to a model directory or .gguf file whose tokenizer loads") from None

    def _load(self, **runtime):
        from jaxrec import runs

        if self.init_from is not None:
            lm = runs.load_trained_lm(self.init_from, self.dtype, role="model.init_from", tokenizer=self.tokenizer,
                                      attention_dropout=self.attention_dropout, remat=self.remat,
                                      matmul_dtype=self.matmul_dtype, **runtime)
            if self.name is not None and not _same_file(self.name, lm.source):
                raise ConfigError(f"model.name {self.name} is not the base model of model.init_from's run "
                                  f"({lm.source}); set model.name to that model or to null")
            return lm
        return runs.load_lm(self.name or DEFAULT_MODEL, self.dtype, tokenizer=self.tokenizer,
                            attention_dropout=self.attention_dropout, remat=self.remat,
                            matmul_dtype=self.matmul_dtype, **runtime)


def _same_file(name: str, source: str) -> bool:
    from jaxrec import assets

    try:
        return Path(assets.resolve_file(name)).resolve() == Path(source).resolve()
    except (assets.AssetError, OSError):
        return False


@dataclasses.dataclass
class DataSpec:
    INPUTS = {"name": InputField("a named dataset asset, a dataset directory or hf:<Category> in the HF datasets "
                                 "cache", asset=True)}

    name: str = "ml-100k"
    """A named dataset asset (``ml-100k``), a directory with interactions.tsv + items.tsv, RecBole .inter + .item
    files, Amazon review + meta files or saved HF datasets, or ``hf:<Category>`` (Amazon Reviews 2023 in the
    offline HF datasets cache)."""
    min_rating: float | None = None
    k_core: int = 5
    """Keep the k-core of users and items (1: no filtering)."""
    sample_users: int | None = None
    """Keep a seeded random subset of this many users (null: all)."""
    sample_items: int | None = None
    """Keep a seeded random subset of this many items, each with all its interactions (null: all); a smaller
    catalogue whose items keep their popularity, for quick runs."""
    cold_items: float | None = None
    """Hold out a seeded share of the items as cold: they stay in the catalogue and keep only the
    interactions that are a user's test target, so no stage trains or validates on them, and the
    test reports how every model ranks them (null: none)."""

    def __post_init__(self):
        if self.k_core < 1:
            raise ValueError(f"k_core must be >= 1 (1 keeps every user and item), got {self.k_core}")
        for name in ("sample_users", "sample_items"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1 or null, got {value}")
        if self.cold_items is not None and not 0 < self.cold_items < 1:
            raise ValueError(f"data.cold_items must be a share in (0, 1) or null, got {self.cold_items}")

    def prep(self, seed: int):
        from jaxrec.data.prep import PrepSpec

        return PrepSpec(self.min_rating, self.k_core, self.sample_users, self.sample_items, self.cold_items, seed=seed)

    def load(self, seed: int, log=print):
        """The preprocessed dataset; what was dropped and why is logged."""
        from jaxrec.data.prep import describe_drops, load_dataset

        data = load_dataset(self.name, self.prep(seed))
        drops = describe_drops(data.report)
        log(f"data: {data.num_users} users, {data.num_items} items, {len(data.items)} interactions from "
            f"{data.report.get('interactions_read', '?')} read" + ("; dropped: " + "; ".join(drops) if drops else ""))
        return data


@dataclasses.dataclass
class BatchSpec:
    """How training examples are batched (global batch over all processes)."""

    size: int = 32
    max_length: int = 64
    max_history: int = 10
    """CSFT: most recent items in a history."""
    csft_separator: str = ""
    """CSFT: text between the history's last title and the target's. The authors' code concatenates the
    two token sequences with nothing between them; ", " makes the target read as one more list item."""
    domain: str = "movie"
    """SCFT: the <domain> in "The <domain> item has the following attributes:"."""
    attribute_drop: float = 0.4
    """SCFT: share of attributes dropped in each view."""
    eval_batches: int = 4
    pack: bool = False
    """csft / mntp / contrastive: pack several examples (titles; CSFT's histories
    with their targets) into each row of max_length tokens (attention stays
    within an example) instead of one padded row per example."""
    workers: int = 0
    """Grain worker processes that prepare batches ahead (0: in the training process)."""
    with_replacement: bool = False
    """seqrec: draw every batch's examples uniformly with replacement (the sampler of the authors' SASRec,
    which LLM-SRec's teacher uses) instead of a shuffled pass over all of them each epoch."""

    def __post_init__(self):
        require_positive(self, "size", "max_length", "max_history", "eval_batches")
        require_rate("attribute_drop", self.attribute_drop)


def check_inputs(config, produced: set[str] = frozenset()) -> None:
    """Every path a config reads exists (or is a named asset, or a run
    directory in ``produced`` that an earlier stage writes): checked before
    anything is created or loaded."""
    from jaxrec.assets import REGISTRY
    from jaxrec.data.hf_datasets import from_hub_cache, is_hub_name

    for path, field in input_fields(type(config)).items():
        value = value_at(config, path)
        if value is None or value in REGISTRY or Path(value).expanduser().exists():
            continue
        if path == ("data", "name") and is_hub_name(value):
            try:
                from_hub_cache(value)
            except DataError as err:
                raise ConfigError(str(err)) from None
            continue
        if any(value == run or value.startswith(run.rstrip("/") + "/") for run in produced):
            continue
        raise ConfigError(f"{'.'.join(path)}: {value} does not exist; expected {field.what}")


@dataclasses.dataclass
class TaskConfig:
    """What every task's config has. Each task's class adds the sections it
    uses; a section it does not use is an error."""

    task: str = ""
    run_dir: str | None = None
    """Where outputs go; default ``runs/<task>-<timestamp>``. A training run resumes from its checkpoints here."""
    seed: int = 0


@dataclasses.dataclass
class TrainingConfig(TaskConfig):
    """Sections of every task that trains through the training loop."""

    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    batch: BatchSpec = dataclasses.field(default_factory=BatchSpec)
    optimizer: OptimizerSpec = dataclasses.field(default_factory=OptimizerSpec)
    mesh: MeshSpec = dataclasses.field(default_factory=MeshSpec)
    loop: LoopSpec = dataclasses.field(default_factory=LoopSpec)


@dataclasses.dataclass
class LMTrainingConfig(TrainingConfig):
    """Sections of the tasks that train an LM (csft, mntp, contrastive, scft)."""

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    trainable: TrainableSpec = dataclasses.field(default_factory=TrainableSpec)
