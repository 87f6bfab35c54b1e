"""Run directories as a contract between tasks.

Every task writes one run directory with a ``manifest.json``:

- ``task``, ``status`` (``running`` / ``finished`` / ``failed`` / ``interrupted``, with ``error``),
  the effective ``config`` and its ``config_hash``;
- ``base``: the base model's identity (path, sha256 of its files, tokenizer),
  ``init_from``: the run whose trained LM this one started from, and
  ``chain``: every run along the way, oldest first, each with the checksum
  of the LM it trained;
- ``outputs``: name -> file (relative path, sha256, bytes, and what a reader
  needs: shapes, the LoRA spec, a recommender's spec);
- ``inputs``: for a stage of a pipeline, the :func:`fingerprint` of every run
  it read (so the runner can tell when an input changed under it).

Other modules read a run only through the readers here (:func:`open_run`,
:func:`load_lm`, :func:`item_embeddings`, :func:`item_table`,
:func:`trained_recommender`, :func:`summary`, :func:`recommender_results`), never by file name or by the
layout of a training checkpoint.

Where an LM's weights come from, in order: the run's own checkpoint when it
resumes > ``model.init_from`` (a finished run: its base plus everything
trained along its chain) > ``model.name`` (a base model).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save

from jaxrec.config import build
from jaxrec.errors import DataError, RunError
from jaxrec.io import save_npy_atomic, sha256_file, write_bytes_atomic, write_json_atomic
from jaxrec.models.layers import LoraSpec
from jaxrec.models.lora import merge_lora
from jaxrec.seqrec.item_vectors import load_item_embeddings
from jaxrec.seqrec.spec import RecommenderSpec

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
LM_FILE = "lm.safetensors"


def config_hash(config: dict) -> str:
    """sha256 of the canonical JSON of a config, without where it is written."""
    payload = {k: v for k, v in config.items() if k != "run_dir"}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Run:
    """The run directory a task is writing; the manifest on disk is kept current.

    Only the writing process (process 0 of a job) touches files; the others
    keep the same manifest in memory.
    """

    def __init__(self, path: str | Path, task: str, config: dict, config_text: str, writer: bool = True,
                 inputs: dict | None = None, relaunched_with: list[dict] | None = None):
        self.path = Path(path)
        self.writer = writer
        self._previous = {name: _read_bytes(self.path / name) for name in (MANIFEST, CONFIG)}
        self._config_text = config_text
        self.manifest: dict[str, Any] = {
            "task": task, "status": "running", "error": None, "config_hash": config_hash(config),
            "base": None, "init_from": None, "chain": [], "inputs": inputs or {}, "outputs": {}, "started": _now(),
            "ended": None, "config": config,
        }
        if relaunched_with:  # relaunches that resumed it with a longer schedule (see jaxrec.run_dir)
            self.manifest["relaunched_with"] = relaunched_with

    def open(self) -> "Run":
        """Write ``config.yaml`` and the manifest with status ``running``."""
        if self.writer:
            self.path.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.path / CONFIG, self._config_text.encode())
            self._write()
        return self

    def _write(self) -> None:
        if self.writer:
            write_json_atomic(self.path / MANIFEST, self.manifest)

    def set_model(self, lm) -> None:
        """Record the LM this run starts from: its base and the runs it was trained along."""
        self.manifest["base"] = lm.base_identity()
        self.manifest["chain"] = list(lm.lineage)
        self.manifest["init_from"] = lm.lineage[-1]["run"] if lm.lineage else None
        self._write()

    def add_output(self, name: str, relative: str, **meta) -> None:
        """Record a file this run wrote (``relative`` to the run directory)."""
        if not self.writer:
            return
        file = self.path / relative
        entry = {"path": relative, "sha256": sha256_file(file), "bytes": file.stat().st_size, **meta}
        self.manifest["outputs"][name] = entry
        self._write()

    def save_npy(self, name: str, relative: str, array: np.ndarray, **meta) -> None:
        if self.writer:
            save_npy_atomic(self.path / relative, array)
        self.add_output(name, relative, shape=list(array.shape), dtype=str(array.dtype), **meta)

    def save_json(self, name: str, relative: str, obj, **meta) -> None:
        if self.writer:
            write_json_atomic(self.path / relative, obj)
        self.add_output(name, relative, **meta)

    def save_arrays(self, name: str, relative: str, tree: dict, **meta) -> None:
        """A nested dict of arrays as one safetensors file, keys joined by '/'."""
        flat = {k: np.ascontiguousarray(np.asarray(v)) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}
        if self.writer:
            write_bytes_atomic(self.path / relative, save(flat))
        shapes = {k: list(v.shape) for k, v in flat.items()}
        self.add_output(name, relative, **({"shapes": shapes} if len(shapes) <= 64 else {}), **meta)

    def finish(self, summary: dict | None = None) -> None:
        if summary is not None:
            self.save_json("summary", "summary.json", summary)
        self.manifest.update(status="finished", error=None, ended=_now())
        self._write()

    def fail(self, error: BaseException | str) -> None:
        self._end("failed", str(error))

    def interrupt(self, signal: BaseException | str) -> None:
        """Stopped by a signal; the next launch resumes it from the checkpoint saved on the way out."""
        self._end("interrupted", str(signal) or "interrupted")

    def _end(self, status: str, error: str) -> None:
        """Record how the run ended, if the disk still takes it: the error that
        ended it (often a full disk) must not be hidden by a second one."""
        self.manifest.update(status=status, error=error, ended=_now())
        try:
            self._write()
        except OSError as err:
            print(f"warning: could not mark {self.path / MANIFEST} {status}: {err}", file=sys.stderr)

    def restore_previous(self) -> None:
        """Put back the manifest and config.yaml found at start (a refused
        relaunch must not describe a run its checkpoints do not hold)."""
        if not self.writer:
            return
        for name, content in self._previous.items():
            target = self.path / name
            if content is None:
                target.unlink(missing_ok=True)
            else:
                write_bytes_atomic(target, content)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# -- readers -----------------------------------------------------------------


def is_run(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _locate(path: Path) -> tuple[Path, str]:
    """(run root, output-name prefix): a ``seed-<n>`` directory of a run with
    several seeds addresses that seed's outputs."""
    if is_run(path):
        return path, ""
    if path.name.startswith("seed-") and is_run(path.parent):
        return path.parent, path.name + "/"
    return path, ""


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """A finished run as its manifest describes it."""

    path: Path
    manifest: dict
    prefix: str = ""

    @property
    def task(self) -> str:
        return self.manifest["task"]

    def config(self, config_class: type):
        """The config the run was made with, built as ``config_class`` (its run_dir left out:
        where a run was written is not part of what it did)."""
        stored = {k: v for k, v in self.manifest["config"].items() if k != "run_dir"}
        return build(config_class, stored, stored=True)

    def output(self, name: str) -> dict:
        outputs = self.manifest["outputs"]
        key = self.prefix + name
        if key not in outputs:
            seeds = sorted({k.split("/")[0] for k in outputs if k.startswith("seed-") and k.endswith("/" + name)})
            hint = (f"; it trained several seeds: name one of {', '.join(str(self.path / s) for s in seeds)}"
                    if seeds and not self.prefix else "")
            raise RunError(f"{self.path / self.prefix}: the {self.task} run has no '{name}' output "
                           f"(it has: {', '.join(sorted(outputs)) or 'none'}){hint}")
        return outputs[key]

    def file(self, name: str, verify: bool = True) -> Path:
        """The path of an output, checked against the checksum recorded when it was written."""
        entry = self.output(name)
        file = self.path / entry["path"]
        if not file.is_file():
            raise RunError(f"{file} is missing; the {self.task} run at {self.path} recorded it as its '{name}' output")
        if verify and sha256_file(file) != entry["sha256"]:
            raise RunError(f"{file} changed after the {self.task} run at {self.path} finished (checksum differs "
                           "from its manifest); run that stage again")
        return file


def read_manifest(path: str | Path) -> dict | None:
    """A run directory's manifest as it is (any status); None when there is none or it is unreadable."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def fingerprint(path: str | Path) -> dict | None:
    """What identifies a finished run's results: its config hash and a digest
    of its outputs' checksums. None when ``path`` is not a finished run."""
    root, _ = _locate(Path(path))
    manifest = read_manifest(root)
    if manifest is None or manifest.get("status") != "finished":
        return None
    outputs = sorted((name, entry["sha256"]) for name, entry in manifest["outputs"].items())
    return {"run": str(root.absolute()), "config_hash": manifest["config_hash"],
            "outputs": hashlib.sha256(json.dumps(outputs).encode()).hexdigest()}


def missing_outputs(path: str | Path) -> list[str]:
    """Outputs a run's manifest lists whose files are gone."""
    manifest = read_manifest(path) or {}
    return [name for name, entry in manifest.get("outputs", {}).items() if not (Path(path) / entry["path"]).is_file()]


def changed_outputs(path: str | Path) -> list[str]:
    """Outputs a finished run's manifest lists whose files no longer match their checksums."""
    manifest = read_manifest(path) or {}
    return [name for name, entry in manifest.get("outputs", {}).items()
            if (Path(path) / entry["path"]).is_file() and sha256_file(Path(path) / entry["path"]) != entry["sha256"]]


def training_curves(path: str | Path) -> dict[str, list[dict]]:
    """The rows of a run's ``metrics.jsonl`` (train and validation), keyed by
    "" or, for a run with several seeds, ``seed-<n>``."""
    root = Path(path)
    curves = {}
    for file in [root / "metrics.jsonl", *sorted(root.glob("seed-*/metrics.jsonl"))]:
        if file.is_file():
            rows = []
            for line in file.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
            curves["" if file.parent == root else file.parent.name] = rows
    return curves


def open_run(path: str | Path, role: str = "the directory") -> RunInfo:
    """A finished run; a clear error naming the directory and what is missing otherwise.
    ``role`` names the setting that pointed here, for the message."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{role} {path} does not exist or is not a directory; it must be a jaxrec run directory")
    root, prefix = _locate(path)
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise RunError(f"{role} {path} is not a jaxrec run: it has no {MANIFEST} "
                       "(python -m jaxrec.launch writes one into every run directory)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{manifest_file} is not valid JSON ({err})") from None
    status = manifest.get("status")
    if status != "finished":
        cause = f": {manifest['error']}" if manifest.get("error") else ""
        raise RunError(f"{role} {path}: the {manifest.get('task')} run has not finished (status {status}{cause}); "
                       "launch it again to finish it")
    return RunInfo(root, manifest, prefix)


def summary(path: str | Path) -> dict:
    run = open_run(path)
    return json.loads(run.file("summary").read_text())


@dataclasses.dataclass(frozen=True)
class SeedResult:
    seed: int
    training: dict
    """The loop's summary: steps, best validation value and step, seconds."""
    test: dict
    """``seqrec.evaluate.evaluate``'s result: ``full`` (and ``sampled``) metrics,
    ``by_popularity`` and ``by_history_length`` groups, ``shuffled``."""

    def metrics(self, protocol: str) -> dict[str, float]:
        return self.test.get(protocol, {})

    def groups(self, kind: str) -> dict[str, dict]:
        """Group name -> {"users", protocol -> metrics} of ``kind`` (``by_popularity`` or
        ``by_history_length``); groups without test users are absent."""
        return self.test.get(kind, {})

    @property
    def shuffled(self) -> dict:
        """Metrics on shuffled histories per protocol, and ``cosine_to_original`` ({} when not tested)."""
        return self.test.get("shuffled", {})


@dataclasses.dataclass(frozen=True)
class RecommenderResults:
    """What a recommender run (a seqrec or llmsrec task) tested: one result per seed,
    and every overall metric's mean and standard deviation over them."""

    per_seed: list[SeedResult]
    over_seeds: dict[str, dict[str, dict[str, float]]]
    """protocol -> metric -> {"mean", "std"}."""

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.per_seed]

    @property
    def protocols(self) -> list[str]:
        return list(self.over_seeds)


def recommender_results(run: str | Path | RunInfo) -> RecommenderResults:
    """The test results of a finished recommender run (its directory, or the run already opened)."""
    info = run if isinstance(run, RunInfo) else open_run(run)
    found = json.loads(info.file("summary").read_text())
    if "per_seed" not in found:
        raise RunError(f"{info.path} is a {info.task} run, which tests no recommender: point at a seqrec or llmsrec run")
    return RecommenderResults([SeedResult(r["seed"], r["training"], r["test"]) for r in found["per_seed"]],
                              found["over_seeds"])


def _load_matrix(run: RunInfo, matrix: str, ids: str, item_ids: list[str]) -> np.ndarray:
    return load_item_embeddings(run.file(matrix), run.file(ids), item_ids)


def item_embeddings(location: str | Path, item_ids: list[str]) -> np.ndarray:
    """Item vectors aligned to ``item_ids`` (row 0: padding) from an encode
    run, or from a matrix a user made: an ``.npy`` file (or a directory with
    ``item_embeddings.npy``) with ``item_ids.json`` beside it."""
    path = Path(location)
    if is_run(path):
        return _load_matrix(open_run(path, "recommender.items.embeddings"), "item_embeddings", "item_ids", item_ids)
    matrix = path / "item_embeddings.npy" if path.is_dir() else path
    ids = matrix.parent / "item_ids.json"
    for needed in (matrix, ids):
        if not needed.exists():
            raise DataError(f"{needed} does not exist; point recommender.items.embeddings at an encode run directory "
                            "or an .npy file with item_ids.json beside it")
    return load_item_embeddings(matrix, ids, item_ids)


def item_table(location: str | Path, item_ids: list[str], seed: int | None = None) -> np.ndarray:
    """The trained item vectors of a seqrec run (or one seed directory of
    it); of a run that trained several seeds, those of ``seed``."""
    try:
        run = open_run(location, "recommender.alignment.to")
        if not run.prefix and f"seed-{seed}/item_table" in run.manifest["outputs"]:
            run = dataclasses.replace(run, prefix=f"seed-{seed}/")
        run.output("item_table")
    except RunError as err:
        raise DataError(f"{err}. recommender.alignment.to must be the run directory of a finished seqrec run with ID "
                        "items (or one of its seed-<n> directories)") from None
    return _load_matrix(run, "item_table", "item_ids", item_ids)


@dataclasses.dataclass(frozen=True)
class TrainedRecommender:
    spec: RecommenderSpec
    """The ``recommender`` section it was trained with."""
    params: dict
    item_ids: list[str]
    """Item id of each row 1.. of its item table."""
    source: str


def trained_recommender(location: str | Path, role: str = "the directory") -> TrainedRecommender:
    """A seqrec run's recommender: the best validation state (or the last,
    without validation), its spec and item ids."""
    run = open_run(location, role)
    if run.task != "seqrec":
        raise RunError(f"{role} {location} is a {run.task} run, not a seqrec run")
    entry = run.output("recommender")
    params = traverse_util.unflatten_dict(load_file(str(run.file("recommender"))), sep="/")
    item_ids = json.loads(run.file("item_ids").read_text())
    spec = build(RecommenderSpec, entry["spec"], prefix="recommender.", stored=True)
    return TrainedRecommender(spec, params, item_ids, str(Path(location)))


# -- trained language models -------------------------------------------------


def save_lm(run: Run, trained: dict, mode: str, lora: LoraSpec | None = None, extra_tokens: int = 0,
            token_names: list[str] | None = None) -> None:
    """Write what an LM task trained (``lora/...`` factors, full ``params/...``
    or chosen subtrees such as ``params/extra_embedding``) as the run's ``lm``
    output, with what a reader needs to apply it: the mode, the LoRA scaling,
    the number of added tokens and, from the run that added them, their names."""
    meta = {"kind": mode, "extra_tokens": int(extra_tokens)}
    if token_names:
        meta["token_names"] = list(token_names)
    if lora is not None:
        meta["lora"] = {"rank": lora.rank, "alpha": lora.alpha, "targets": lora.targets}
    run.save_arrays("lm", LM_FILE, trained, **meta)


def load_lm(name_or_path: str | Path, dtype: str = "float32", **kwargs):
    """:func:`jaxrec.models.lm.load_pretrained` that also takes a run directory: the
    base model that run started from plus everything trained along its chain."""
    from jaxrec.models.lm import load_pretrained

    if is_run(name_or_path):
        return load_trained_lm(name_or_path, dtype, **kwargs)
    return load_pretrained(name_or_path, dtype, **kwargs)


def load_trained_lm(path: str | Path, dtype: str = "float32", *, role: str = "the directory", **kwargs):
    """The LM a finished run trained: LoRA merged into its base, full weights
    replaced, added token rows appended; recursively along ``init_from``."""
    from jaxrec.models.lm import load_pretrained

    run = open_run(path, role)
    entry = run.output("lm")
    manifest = run.manifest
    if manifest["init_from"]:
        lm = load_trained_lm(manifest["init_from"], dtype, role=f"the init_from of {run.path}", **kwargs)
    else:
        base = manifest["base"]
        if kwargs.get("tokenizer") is None:  # the tokenizer the chain was trained with
            kwargs["tokenizer"] = base.get("tokenizer")
        if not Path(base["model"]).exists() and not _is_asset(base["model"]):
            raise RunError(f"{run.path} was trained on {base['model']}, which no longer exists; put the base model "
                           "back there (its checksum is in the run's manifest)")
        lm = load_pretrained(base["model"], dtype, **kwargs)
        if lm.base_identity()["sha256"] != base["sha256"]:
            raise RunError(f"{run.path} was trained on {base['model']}, whose files have changed since "
                           "(checksums differ); point model.name at the original weights")
    file = run.file("lm")
    lm = apply_trained(lm, file, entry)
    return lm.with_lineage({"run": str(run.path.absolute()), "task": run.task,
                            "config_hash": manifest["config_hash"], "lm_sha256": entry["sha256"]})


def _is_asset(name: str) -> bool:
    from jaxrec.assets import REGISTRY

    return name in REGISTRY


def apply_trained(lm, file: Path, meta: dict):
    """``lm`` with a trained-LM file applied (see :func:`save_lm`)."""
    trained = traverse_util.unflatten_dict(load_file(str(file)), sep="/")
    params, config = lm.params, lm.config
    extra = int(meta.get("extra_tokens", 0))
    if extra and config.extra_tokens != extra:
        config = config.replace(extra_tokens=extra)
    if "params" in trained:
        flat = traverse_util.flatten_dict(params)
        for path, value in traverse_util.flatten_dict(trained["params"]).items():
            if path in flat and tuple(flat[path].shape) != value.shape:
                raise RunError(f"{file}: {'/'.join(path)} is {value.shape} but the model's is "
                               f"{tuple(flat[path].shape)}; the run was trained on another base")
            flat[path] = (jax.device_put(value.astype(jnp.dtype(config.param_dtype)), flat[path].sharding) if path in flat
                          else jnp.asarray(value, config.param_dtype))
        params = traverse_util.unflatten_dict(flat)
    if "lora" in trained:
        spec = meta["lora"]
        params = merge_lora(params, trained["lora"], LoraSpec(spec["rank"], spec["alpha"], 0.0, spec["targets"]))
    return lm.replace(config=config, params=params)
