"""From raw files to leave-one-out sequences, cached on disk.

Steps, in order: rating threshold -> drop interactions with items that have no
title (reported) -> iterative k-core on users and items -> drop users with
fewer than 3 interactions (reported) -> seeded user subsampling -> stable
chronological order (file order breaks timestamp ties) -> item ids remapped to
1..n (0 is padding) -> optionally, cold items held out. A user's last item is
the test target, the one before the validation target, everything earlier is
training.

Cold items (``cold_items``, a seeded share of the catalogue) keep their place
in the catalogue but lose every interaction except those that are a user's
test target: no training input of any stage and no validation target ever
holds one, and the test cases whose target is cold measure how well a model
ranks items it has never seen interacted with.

The result is cached under ``$JAXREC_CACHE/datasets`` as ``arrays.npz`` +
``meta.json`` (no pickle), keyed by the source files' checksums and the options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from jaxrec import assets
from jaxrec.data.amazon import find_files as find_amazon_files
from jaxrec.data.amazon import read_amazon
from jaxrec.data.hf_datasets import dataset_files, find_datasets, from_hub_cache, is_hub_name, read_hf_amazon
from jaxrec.data.interactions import (
    InteractionLog,
    read_recbole_interactions,
    read_tsv_interactions,
    stable_chronological_order,
)
from jaxrec.data.item_tables import ItemTable, read_items
from jaxrec.errors import DataError
from jaxrec.io import atomic_dir, sha256_file

MIN_SEQUENCE = 3  # one training item, the validation target and the test target
_CACHE_VERSION = 3


@dataclasses.dataclass
class PrepSpec:
    min_rating: float | None = None
    k_core: int = 5
    """Keep only users and items with at least this many interactions, repeatedly (0: off)."""
    sample_users: int | None = None
    """Keep a seeded random subset of this many users (after filtering)."""
    sample_items: int | None = None
    """Keep a seeded random subset of this many items with all their interactions (after filtering, before
    sampling users); users left with too short a sequence are dropped. Unlike sampling users, this shrinks the
    catalogue while each kept item keeps (almost) its popularity."""
    cold_items: float | None = None
    """Hold out this share of the items (seeded): each keeps only the interactions that are a user's test target."""
    seed: int = 0


@dataclasses.dataclass
class SeqData:
    """Users' chronological item sequences over remapped item ids (0 = padding)."""

    item_ids: np.ndarray  # [n_items + 1] original ids; item_ids[0] == ""
    titles: list[str]  # [n_items + 1]
    attributes: list[dict]  # [n_items + 1]
    user_ids: np.ndarray  # [n_users]
    offsets: np.ndarray  # [n_users + 1] into items / timestamps
    items: np.ndarray  # [n_interactions] int32
    timestamps: np.ndarray  # [n_interactions]
    stats: dict
    report: dict
    cold: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))
    """Held-out cold items (sorted ids): never in a training input, only ever a test target."""

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def split(self, user: int, part: str, max_history: int | None = None) -> tuple[np.ndarray, int]:
        """(history, target) for ``part`` "valid" or "test"; the history is cut
        to its ``max_history`` most recent items. Training items are
        ``sequence[:-2]``."""
        seq = self.sequence(user)
        cut = {"valid": len(seq) - 2, "test": len(seq) - 1}[part]
        start = 0 if max_history is None else max(0, cut - max_history)
        return seq[start:cut], int(seq[cut])

    def train_sequences(self) -> list[np.ndarray]:
        return [self.sequence(u)[:-2] for u in range(self.num_users)]

    def warm_items(self) -> np.ndarray:
        """Ids of the items that training may read (all but the held-out cold ones)."""
        return np.setdiff1d(np.arange(1, self.num_items + 1), self.cold).astype(np.int32)


def _files(path: Path) -> tuple[Path, Path]:
    """(interactions, items) of a dataset directory: two files, or two saved HF datasets."""
    if (path / "interactions.tsv").exists():
        return path / "interactions.tsv", path / "items.tsv"
    inter, item = sorted(path.glob("*.inter")), sorted(path.glob("*.item"))
    if len(inter) == 1 and len(item) == 1:
        return inter[0], item[0]
    amazon = find_amazon_files(path) or find_datasets(path)
    if amazon is not None:
        return amazon
    raise DataError(
        f"{path}: expected interactions.tsv + items.tsv, one RecBole .inter and one .item file, Amazon "
        f"reviews + meta_<Category> files, or Amazon 2023 review and meta datasets saved with HF datasets "
        f"(found {len(inter)} .inter, {len(item)} .item)"
    )


def read_raw(files: tuple[Path, Path]) -> tuple[InteractionLog, ItemTable, dict]:
    """The interaction log, the item table and what reading dropped or found."""
    inter, item = files
    report: dict = {}
    if inter.suffix == ".inter":
        return read_recbole_interactions(inter), read_items(item), report
    if inter.name == "interactions.tsv":
        return read_tsv_interactions(inter), read_items(item), report
    if inter.is_dir():
        return (*read_hf_amazon(inter, item, report), report)
    return (*read_amazon(inter, item, report), report)


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Row mask keeping users and items with >= k interactions, iterated until stable."""
    keep = np.ones(len(users), bool)
    if k <= 1:
        return keep
    _, user_codes = np.unique(users, return_inverse=True)
    _, item_codes = np.unique(items, return_inverse=True)
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max() + 1)
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max() + 1)
        new_keep = keep & (user_counts[user_codes] >= k) & (item_counts[item_codes] >= k)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def _statistics(lengths: np.ndarray, items: np.ndarray, num_items: int) -> dict:
    popularity = np.bincount(items, minlength=num_items + 1)[1:]
    n = int(lengths.sum())
    return {
        "users": int(len(lengths)),
        "items": int(num_items),
        "interactions": n,
        "density": n / max(len(lengths) * num_items, 1),
        "length_quantiles": {q: float(np.quantile(lengths, q / 100)) for q in (0, 25, 50, 75, 90, 100)},
        "length_mean": float(lengths.mean()),
        "popularity_quantiles": {q: float(np.quantile(popularity, q / 100)) for q in (0, 25, 50, 75, 90, 100)},
        "items_with_under_5_interactions": int((popularity < 5).sum()),
    }


def preprocess(log: InteractionLog, table: ItemTable, spec: PrepSpec, read_report: dict | None = None) -> SeqData:
    report = {**(read_report or {}), "interactions_read": len(log)}
    if spec.min_rating is not None:
        if log.ratings is None or np.isnan(log.ratings).all():
            raise DataError(f"{log.source}: data.min_rating is set but the file has no rating column")
        log = log.take(np.flatnonzero(log.ratings >= spec.min_rating))
        report["interactions_below_min_rating"] = report["interactions_read"] - len(log)

    # the same (user, item, timestamp) twice is one interaction; the first in file order is kept
    key = np.empty(len(log), [("user", "i8"), ("item", "i8"), ("time", "f8")])
    key["user"] = np.unique(log.users, return_inverse=True)[1]
    key["item"] = np.unique(log.items, return_inverse=True)[1]
    key["time"] = log.timestamps
    _, first = np.unique(key, return_index=True)
    report["duplicate_interactions"] = len(log) - len(first)
    if report["duplicate_interactions"]:
        log = log.take(np.sort(first))

    listed = np.isin(log.items, np.asarray(table.ids, dtype=str))
    report["items_missing_from_item_file"] = int(len(np.unique(log.items[~listed])))
    report["interactions_with_items_missing_from_item_file"] = int((~listed).sum())
    titled = {i for i, t in zip(table.ids, table.titles) if t}
    has_title = np.isin(log.items, np.asarray(sorted(titled), dtype=str))
    report["items_without_title"] = int(len(np.unique(log.items[listed & ~has_title])))
    report["interactions_with_untitled_items"] = int((listed & ~has_title).sum())
    log = log.take(np.flatnonzero(has_title))

    before = len(log)
    log = log.take(np.flatnonzero(k_core(log.users, log.items, spec.k_core)))
    report["interactions_removed_by_k_core"] = before - len(log)

    log, report["users_with_under_3_interactions"] = _drop_short_users(log)
    if spec.sample_items is not None and spec.sample_items < len(np.unique(log.items)):
        items = np.unique(log.items)
        chosen = np.random.default_rng(spec.seed).choice(items, spec.sample_items, replace=False)
        report["items_not_sampled"] = len(items) - spec.sample_items
        log = log.take(np.flatnonzero(np.isin(log.items, chosen)))
        log, report["users_too_short_after_item_sampling"] = _drop_short_users(log)
    if spec.sample_users is not None and spec.sample_users < len(np.unique(log.users)):
        chosen = np.random.default_rng(spec.seed).choice(np.unique(log.users), spec.sample_users, replace=False)
        log = log.take(np.flatnonzero(np.isin(log.users, chosen)))
    if len(log) == 0:
        raise DataError(f"{log.source}: no interactions left after filtering ({report})")

    log = log.take(stable_chronological_order(log.users, log.timestamps))
    item_ids, codes = np.unique(log.items, return_inverse=True)
    items = (codes + 1).astype(np.int32)
    cold = np.zeros(0, np.int32)
    if spec.cold_items is not None:
        cold = np.sort(np.random.default_rng([spec.seed, 7]).choice(
            np.arange(1, len(item_ids) + 1), int(round(spec.cold_items * len(item_ids))), replace=False)).astype(np.int32)
        keep = _without_cold(log.users, items, cold, report)
        log, items = log.take(keep), items[keep]
    boundaries = np.flatnonzero(log.users[1:] != log.users[:-1]) + 1
    offsets = np.concatenate([[0], boundaries, [len(log)]]).astype(np.int64)
    row = {item_id: index for index, item_id in enumerate(table.ids)}
    order = [row[i] for i in item_ids]
    return SeqData(
        item_ids=np.concatenate([[""], item_ids]).astype(str),
        titles=[""] + [table.titles[r] for r in order],
        attributes=[{}] + [table.attributes[r] for r in order],
        user_ids=log.users[offsets[:-1]],
        offsets=offsets,
        items=items,
        timestamps=log.timestamps,
        stats=_statistics(np.diff(offsets), items, len(item_ids)),
        report=report,
        cold=cold,
    )


def _without_cold(users: np.ndarray, items: np.ndarray, cold: np.ndarray, report: dict) -> np.ndarray:
    """Rows to keep of a log sorted by user: every interaction with a warm item,
    and a cold one only as its user's last; users left with fewer than
    MIN_SEQUENCE interactions go entirely."""
    last = np.r_[users[1:] != users[:-1], True]
    is_cold = np.isin(items, cold)
    keep = ~is_cold | last
    _, user_codes = np.unique(users, return_inverse=True)
    short = np.bincount(user_codes[keep], minlength=user_codes.max() + 1) < MIN_SEQUENCE
    keep &= ~short[user_codes]
    report["cold_items"] = len(cold)
    report["interactions_with_cold_items_held_out"] = int((is_cold & ~keep & ~short[user_codes]).sum())
    report["users_too_short_without_cold_items"] = int(short.sum())
    report["test_targets_cold"] = int((is_cold & keep).sum())
    return np.flatnonzero(keep)


def _drop_short_users(log):
    """The log without users who have fewer than MIN_SEQUENCE interactions, and how many were dropped."""
    users, counts = np.unique(log.users, return_counts=True)
    short = users[counts < MIN_SEQUENCE]
    if len(short):
        log = log.take(np.flatnonzero(~np.isin(log.users, short)))
    return log, int(len(short))


def _cache_key(sources: tuple[Path, ...], spec: PrepSpec) -> str:
    digest = hashlib.sha256(json.dumps([_CACHE_VERSION, dataclasses.asdict(spec)]).encode())
    for source in sources:
        for f in dataset_files(source) if source.is_dir() else [source]:
            digest.update(sha256_file(f).encode())
    return digest.hexdigest()[:20]


def _save(data: SeqData, directory: Path) -> None:
    np.savez(directory / "arrays.npz", item_ids=data.item_ids, user_ids=data.user_ids, offsets=data.offsets,
             items=data.items, timestamps=data.timestamps, cold=data.cold)
    meta = {"titles": data.titles, "attributes": data.attributes, "stats": data.stats, "report": data.report}
    (directory / "meta.json").write_text(json.dumps(meta))


def _load(directory: Path) -> SeqData:
    with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
        loaded = {k: arrays[k] for k in arrays.files}
    meta = json.loads((directory / "meta.json").read_text())
    return SeqData(titles=meta["titles"], attributes=meta["attributes"], stats=meta["stats"], report=meta["report"], **loaded)


def load_dataset(name_or_path: str | Path, spec: PrepSpec | None = None, cache: bool = True) -> SeqData:
    """Read, preprocess and split a dataset (cached by source checksums and options)."""
    spec = spec or PrepSpec()
    if is_hub_name(name_or_path):
        files = from_hub_cache(name_or_path)
        label = "hf-" + name_or_path.rstrip("/").rsplit("/", 1)[-1].removeprefix("hf:")
    else:
        path = assets.resolve(name_or_path)
        if not path.is_dir():
            raise DataError(f"{path}: expected a dataset directory")
        files, label = _files(path), path.name
    directory = assets.cache_root() / "datasets" / f"{label}-{_cache_key(files, spec)}"
    if cache and (directory / "meta.json").exists():
        return _load(directory)
    log, table, read_report = read_raw(files)
    data = preprocess(log, table, spec, read_report)
    if cache:
        with atomic_dir(directory) as tmp:
            _save(data, tmp)
    return data


def describe_drops(report: dict) -> list[str]:
    """The report's non-zero counts of dropped data, one line each."""
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}: {', '.join(f'{k} {v}' for k, v in value.items())}")
        elif key != "interactions_read" and value:
            lines.append(f"{key.replace('_', ' ')}: {value}")
    return lines
