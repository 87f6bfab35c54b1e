"""Amazon Reviews 2018 and 2023 files.

- 2018: ``<Category>.json.gz`` or ``<Category>_5.json.gz`` (``reviewerID``,
  ``asin``, ``unixReviewTime`` in seconds, ``overall``) with
  ``meta_<Category>.json.gz`` (``asin``, ``title``, ``brand``, ``category``,
  ``description``, ``price``, ...);
- 2023: ``<Category>.jsonl[.gz]`` (``user_id``, ``parent_asin``, ``timestamp`` in
  milliseconds, ``rating``) with ``meta_<Category>.jsonl[.gz]`` (``parent_asin``,
  ``title``, ``store``, ``categories``, ``details``, ``description``, ``price``, ...).

Files are read line by line so a malformed line is counted and located
instead of failing the whole file; lines that are not JSON objects are
skipped and reported with the first offending line number.
"""

from __future__ import annotations

import gzip
import html
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxrec.data.interactions import InteractionLog
from jaxrec.data.encoding import invalid_utf8_error
from jaxrec.data.item_tables import ItemTable
from jaxrec.errors import DataError

REVIEW_FIELDS = {
    2018: ("reviewerID", "asin", "unixReviewTime", "overall", 1.0),
    2023: ("user_id", "parent_asin", "timestamp", "rating", 1e-3),
}
_META_ATTRIBUTES = {
    2018: ("brand", "category", "description", "price"),
    2023: ("store", "categories", "details", "description", "price"),
}


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def json_lines(path: Path, report: dict) -> Iterator[dict]:
    """JSON objects of a .json(l)[.gz] file; malformed lines are counted in
    ``report[path.name]`` with the first offending line number."""
    bad, first_bad = 0, None
    try:
        with _open(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict):
                    bad += 1
                    first_bad = first_bad or number
                    continue
                yield record
    except UnicodeDecodeError:
        raise invalid_utf8_error(path) from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    if bad:
        report[path.name] = {"malformed_lines": bad, "first_malformed_line": first_bad}


def detect_version(path: Path) -> int:
    for record in json_lines(path, {}):
        if "reviewerID" in record:
            return 2018
        if "user_id" in record and "parent_asin" in record:
            return 2023
        raise DataError(f"{path}: neither Amazon 2018 (reviewerID, asin) nor 2023 (user_id, parent_asin) fields: {sorted(record)}")
    raise DataError(f"{path}: no JSON records")


def read_reviews(path: Path, version: int, report: dict) -> InteractionLog:
    user_key, item_key, time_key, rating_key, scale = REVIEW_FIELDS[version]
    users, items, times, ratings = [], [], [], []
    missing = 0
    for record in json_lines(path, report):
        try:
            user, item, when = record[user_key], record[item_key], float(record[time_key])
        except (KeyError, TypeError, ValueError):
            missing += 1
            continue
        users.append(str(user))
        items.append(str(item))
        times.append(when * scale)
        ratings.append(float(record.get(rating_key, np.nan)))
    if missing:
        report[f"{path.name} records without {user_key}/{item_key}/{time_key}"] = missing
    if not users:
        raise DataError(f"{path}: no usable reviews (need {user_key}, {item_key}, {time_key})")
    return InteractionLog(np.asarray(users), np.asarray(items), np.asarray(times), np.asarray(ratings), str(path))


def _attribute(value) -> str | list[str] | None:
    if isinstance(value, dict):
        value = [f"{k}: {v}" for k, v in value.items()]
    if isinstance(value, list):
        value = [html.unescape(str(v)).strip() for v in value if str(v).strip()]
        return value or None
    if value is None:
        return None
    text = html.unescape(str(value)).strip()
    return text or None


def read_meta(path: Path, version: int, report: dict) -> ItemTable:
    return items_from_records(json_lines(path, report), version, str(path))


def items_from_records(records, version: int, source: str) -> ItemTable:
    """The item table of meta records (the first record of each item counts)."""
    item_key = REVIEW_FIELDS[version][1]
    ids, titles, attributes, seen = [], [], [], set()
    for record in records:
        item = record.get(item_key)
        if item is None or item in seen:
            continue
        seen.add(item)
        ids.append(str(item))
        titles.append(html.unescape(str(record.get("title") or "")).strip())
        attributes.append({k: v for k in _META_ATTRIBUTES[version] if (v := _attribute(record.get(k))) is not None})
    if not ids:
        raise DataError(f"{source}: no item records with {item_key!r}")
    return ItemTable(ids, titles, attributes, source)


def find_files(directory: Path) -> tuple[Path, Path] | None:
    """(reviews, meta) of an Amazon category directory, or None if it is not one."""
    meta = sorted(p for p in directory.iterdir() if p.name.startswith("meta_") and ".json" in p.name)
    if len(meta) != 1:
        return None
    category = meta[0].name[len("meta_") :].split(".json")[0]
    reviews = [
        p for p in directory.iterdir()
        if not p.name.startswith("meta_") and p.name.split(".json")[0] in (category, f"{category}_5")
    ]
    if len(reviews) != 1:
        raise DataError(f"{directory}: found {meta[0].name} but {len(reviews)} review files named {category}[_5].json(l)[.gz]")
    return reviews[0], meta[0]


def read_amazon(reviews: Path, meta: Path, report: dict) -> tuple[InteractionLog, ItemTable]:
    version = detect_version(reviews)
    return joined(read_reviews(reviews, version, report), read_meta(meta, version, report), version, report)


def joined(log: InteractionLog, table: ItemTable, version: int, report: dict) -> tuple[InteractionLog, ItemTable]:
    """The reviews and the meta table of one category, checked to belong together."""
    reviews, meta = log.source, table.source
    reviewed = np.unique(log.items)
    covered = np.isin(reviewed, np.asarray(table.ids))
    if not covered.any():
        raise DataError(
            f"{meta}: covers none of the {len(reviewed)} items reviewed in {reviews} "
            f"(e.g. {list(reviewed[:3])}); is it the meta file of the same category and release?"
        )
    report["reviewed_items_missing_from_meta"] = int((~covered).sum())
    report["amazon_release"] = version
    return log, table
