"""Amazon Reviews 2023 saved with HF ``datasets``: a directory holding the
review and the meta dataset of one category, each written by ``save_to_disk``
(a ``Dataset``, or a ``DatasetDict`` with one split such as the hub's
``full``), named ``reviews`` / ``meta`` or as the hub's configs
``raw_review_<Category>`` / ``raw_meta_<Category>``::

    from datasets import load_dataset
    for kind in ("review", "meta"):
        load_dataset("McAuley-Lab/Amazon-Reviews-2023", f"raw_{kind}_All_Beauty").save_to_disk(f"beauty/raw_{kind}_All_Beauty")

A category that ``load_dataset`` already put in the HF cache is read from
there, offline, as ``data.name: hf:All_Beauty`` (the Amazon Reviews 2023 hub
repository) or ``hf:<owner>/<repo>/<Category>`` for a copy in the same
layout: the cached Arrow files of its ``raw_review_<Category>`` and
``raw_meta_<Category>`` configs, found under ``HF_DATASETS_CACHE`` (default
``$HF_HOME/datasets``, i.e. ``~/.cache/huggingface/datasets``).

The reviews are read column-wise from the memory-mapped Arrow tables; the meta
records go through the same item table builder as the JSON-lines files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from jaxrec.data.amazon import REVIEW_FIELDS, items_from_records, joined
from jaxrec.data.interactions import InteractionLog
from jaxrec.data.item_tables import ItemTable
from jaxrec.errors import DataError

_MARKERS = ("state.json", "dataset_dict.json")
_NAMES = {"reviews": ("reviews", "raw_review_"), "meta": ("meta", "raw_meta_")}


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in _MARKERS)


def find_datasets(directory: Path) -> tuple[Path, Path] | None:
    """(reviews, meta) saved datasets in ``directory``, or None if it holds none."""
    found = {}
    for kind, (exact, prefix) in _NAMES.items():
        matches = sorted(p for p in directory.iterdir() if _is_saved_dataset(p) and (p.name == exact or p.name.startswith(prefix)))
        if len(matches) > 1:
            raise DataError(f"{directory}: several saved {kind} datasets ({', '.join(p.name for p in matches)}); "
                            "keep one category per directory")
        if matches:
            found[kind] = matches[0]
    if not found:
        return None
    if len(found) == 1:
        (kind, path), = found.items()
        other = "meta" if kind == "reviews" else "reviews"
        raise DataError(f"{directory}: found the saved {kind} dataset {path.name} but no {other} dataset "
                        f"(a directory named {_NAMES[other][0]} or {_NAMES[other][1]}<Category>)")
    return found["reviews"], found["meta"]


HUB_PREFIX = "hf:"
AMAZON_2023_REPO = "McAuley-Lab/Amazon-Reviews-2023"


def is_hub_name(name) -> bool:
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def hub_cache_root() -> Path:
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path("~/.cache/huggingface")
    return Path(home).expanduser() / "datasets"


def _normalised(name: str) -> str:
    return name.lower().replace("-", "_")


def from_hub_cache(name: str) -> tuple[Path, Path]:
    """(reviews, meta) directories of cached Arrow files for ``hf:<Category>``
    or ``hf:<owner>/<repo>/<Category>``; an error that says what the cache holds otherwise."""
    parts = name[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) == 1:
        repo, category = AMAZON_2023_REPO, parts[0]
    elif len(parts) == 3:
        repo, category = "/".join(parts[:2]), parts[2]
    else:
        raise DataError(f"data.name {name!r}: expected hf:<Category> or hf:<owner>/<repo>/<Category>")
    root = hub_cache_root()
    wanted = _normalised(repo.replace("/", "___"))
    builders = [d for d in root.iterdir() if d.is_dir() and _normalised(d.name) == wanted] if root.is_dir() else []
    if not builders:
        raise DataError(f"data.name {name!r}: {repo} is not in the HF datasets cache {root} (set HF_DATASETS_CACHE "
                        f"or HF_HOME; fill it once online with datasets.load_dataset({repo!r}, 'raw_review_{category}') "
                        f"and 'raw_meta_{category}')")
    builder = builders[0]
    found = []
    for prefix in ("raw_review_", "raw_meta_"):
        cached = _latest_cached(builder / f"{prefix}{category}")
        if cached is None:
            configs = sorted(d.name for d in builder.iterdir() if d.is_dir())
            raise DataError(f"data.name {name!r}: no cached Arrow files for the config {prefix}{category} in "
                            f"{builder} (cached configs: {', '.join(configs) or 'none'})")
        found.append(cached)
    return found[0], found[1]


def _latest_cached(config_dir: Path) -> Path | None:
    """The most recently written <version>/<hash> directory of a cached config that holds Arrow files."""
    candidates = [d for d in config_dir.glob("*/*") if d.is_dir() and any(d.glob("*.arrow"))]
    return max(candidates, key=lambda d: d.stat().st_mtime) if candidates else None


_CACHED_SPLIT = re.compile(r"-(?P<split>[A-Za-z0-9_.]+?)(-\d{5}-of-\d{5})?\.arrow$")


def _from_cache_files(path: Path):
    """A cached builder directory's one split, memory-mapped from its Arrow shards."""
    import datasets

    by_split: dict[str, list[Path]] = {}
    for file in sorted(path.glob("*.arrow")):
        match = _CACHED_SPLIT.search(file.name)
        by_split.setdefault(match["split"] if match else file.stem, []).append(file)
    if len(by_split) != 1:
        raise DataError(f"{path}: cached splits {sorted(by_split)}; expected one (the hub's 'full')")
    (files,) = by_split.values()
    return datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])


def dataset_files(path: Path) -> list[Path]:
    """Every file of a saved dataset (what its cache key is made of)."""
    return sorted(p for p in path.rglob("*") if p.is_file())


def _load(path: Path):
    import datasets

    if not _is_saved_dataset(path):
        return _from_cache_files(path)
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(f"{path}: a DatasetDict with splits {list(loaded)}; save the one split to read")
        loaded = next(iter(loaded.values()))
    return loaded


def _column(table, name: str, path: Path) -> np.ndarray:
    if name not in table.column_names:
        raise DataError(f"{path}: no column {name!r} (columns: {', '.join(table.column_names)}); "
                        "expected the Amazon Reviews 2023 layout")
    return table.column(name).to_numpy(zero_copy_only=False)


def read_reviews(path: Path) -> InteractionLog:
    user_key, item_key, time_key, rating_key, scale = REVIEW_FIELDS[2023]
    table = _load(path).data  # the Arrow table, memory-mapped
    users, items = _column(table, user_key, path), _column(table, item_key, path)
    times = _column(table, time_key, path).astype(np.float64) * scale
    ratings = (_column(table, rating_key, path).astype(np.float64) if rating_key in table.column_names
               else np.full(len(users), np.nan))
    if not len(users):
        raise DataError(f"{path}: no reviews")
    return InteractionLog(users.astype(str), items.astype(str), times, ratings, str(path))


def _decoded(record: dict) -> dict:
    """Meta fields the hub stores as JSON text (``details``) as their values."""
    details = record.get("details")
    if isinstance(details, str) and details.startswith("{"):
        try:
            record = {**record, "details": json.loads(details)}
        except json.JSONDecodeError:
            pass
    return record


def read_meta(path: Path) -> ItemTable:
    return items_from_records((_decoded(r) for r in _load(path)), 2023, str(path))


def read_hf_amazon(reviews: Path, meta: Path, report: dict) -> tuple[InteractionLog, ItemTable]:
    return joined(read_reviews(reviews), read_meta(meta), 2023, report)
