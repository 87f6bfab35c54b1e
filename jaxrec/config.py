"""Typed run configuration: dataclasses filled from YAML (read with a
SafeLoader: no objects are ever constructed) plus ``key.path=value`` overrides.

Unknown keys and values of the wrong type are errors that name the key and
list the valid ones; nothing is silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml

from jaxrec.llmsrec.spec import DistillSpec
from jaxrec.objectives.model_losses import ContrastiveSpec, MaskingSpec
from jaxrec.seqrec.spec import EvalSpec, RecommenderSpec
from jaxrec.train.engine import TrainableSpec
from jaxrec.train.loop import LoopSpec
from jaxrec.train.mesh import MeshSpec
from jaxrec.train.optim import OptimizerSpec


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@dataclasses.dataclass
class ModelSpec:
    name: str = "smollm2-135m"
    """A named asset (``smollm2-135m``), an HF model directory, or a LLaMA GGUF file."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    tokenizer: str | None = None
    """Overrides the tokenizer that comes with the model (HF directory or GGUF file)."""
    attention_dropout: float | None = None
    """Attention dropout while training (default: the checkpoint's, usually 0)."""


@dataclasses.dataclass
class DataSpec:
    name: str = "ml-100k"
    """A named dataset asset (``ml-100k``), a directory with interactions.tsv + items.tsv, or RecBole .inter + .item files."""
    min_rating: float | None = None
    k_core: int = 5
    sample_users: int | None = None

    def prep(self, seed: int):
        from jaxrec.data.prep import PrepSpec

        return PrepSpec(self.min_rating, self.k_core, self.sample_users, seed)


@dataclasses.dataclass
class EncodeSpec:
    pooling: Literal["mean", "last"] = "mean"
    mask: Literal["bidirectional", "causal"] = "bidirectional"
    batch_size: int = 64
    max_length: int = 128

    def __post_init__(self):
        _require_positive(self, "batch_size", "max_length")


@dataclasses.dataclass
class BatchSpec:
    """How training examples are batched (global batch over all processes)."""

    size: int = 32
    max_length: int = 64
    max_history: int = 10
    """CSFT: most recent items in a history."""
    domain: str = "movie"
    """SCFT: the <domain> in "The <domain> item has the following attributes:"."""
    attribute_drop: float = 0.4
    """SCFT: share of attributes dropped in each view."""
    eval_batches: int = 4
    pack: bool = False
    """mntp / contrastive: pack several titles into each row of max_length tokens
    (attention stays within a title) instead of one padded row per title."""
    workers: int = 0
    """Grain worker processes that prepare batches ahead (0: in the training process)."""

    def __post_init__(self):
        _require_positive(self, "size", "max_length", "max_history", "eval_batches")


@dataclasses.dataclass
class RunConfig:
    task: Literal["encode", "csft", "mntp", "contrastive", "scft", "seqrec", "llmsrec"] = "encode"
    run_dir: str | None = None
    """Where outputs go; default ``runs/<task>-<timestamp>``. A training run resumes from its checkpoints here."""
    seed: int = 0
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    encode: EncodeSpec = dataclasses.field(default_factory=EncodeSpec)
    batch: BatchSpec = dataclasses.field(default_factory=BatchSpec)
    trainable: TrainableSpec = dataclasses.field(default_factory=TrainableSpec)
    optimizer: OptimizerSpec = dataclasses.field(default_factory=OptimizerSpec)
    mesh: MeshSpec = dataclasses.field(default_factory=MeshSpec)
    loop: LoopSpec = dataclasses.field(default_factory=LoopSpec)
    masking: MaskingSpec = dataclasses.field(default_factory=MaskingSpec)
    contrastive: ContrastiveSpec = dataclasses.field(default_factory=ContrastiveSpec)
    recommender: RecommenderSpec = dataclasses.field(default_factory=RecommenderSpec)
    evaluation: EvalSpec = dataclasses.field(default_factory=EvalSpec)
    distill: DistillSpec = dataclasses.field(default_factory=DistillSpec)


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no object construction) that also reads exponent
    floats without a dot, such as 1e-9, as numbers: YAML 1.1 makes them strings."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def _safe_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)


def _require_positive(spec, *names: str) -> None:
    for name in names:
        if getattr(spec, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(spec, name)}")


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(tp, value: Any, key: str):
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, prefix=key + ".")
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
    else:
        raise TypeError(f"config annotation {tp!r} of {key} is not supported")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def build(cls, data: Any, prefix: str = ""):
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type."""
    where = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown key '{prefix}{key}'{hint}; valid keys under {where}: {', '.join(fields)}"
            )
    values = {name: _coerce(hints[name], value, prefix + name) for name, value in data.items()}
    try:
        return cls(**values)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def apply_override(tree: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = _safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None, overrides: list[str] = (), cls=RunConfig):
    """Read a YAML config, apply overrides, and validate it into ``cls``."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        try:
            tree = _safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return build(cls, tree)
    except ConfigError as err:
        origin = f"{path}" if path is not None else "config"
        raise ConfigError(f"{origin}: {err}") from None


def to_yaml(config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
