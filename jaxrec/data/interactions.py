"""Interaction logs (user, item, timestamp, optional rating) in file order.

- ``interactions.tsv`` with header ``user_id<TAB>item_id<TAB>timestamp``;
- RecBole atomic ``.inter`` files (``user_id:token``, ``item_id:token``,
  ``timestamp:float``, optionally ``rating:float``);
- Amazon review files: see :mod:`jaxrec.data.amazon`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from jaxrec.data.encoding import invalid_utf8_error, names_invalid_utf8
from jaxrec.errors import DataError


@dataclasses.dataclass
class InteractionLog:
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> "InteractionLog":
        ratings = None if self.ratings is None else self.ratings[rows]
        return InteractionLog(self.users[rows], self.items[rows], self.timestamps[rows], ratings, self.source)


def _read_table(path: Path, names: list[str], types: dict[str, pa.DataType]) -> pa.Table:
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types)),
        )
    except pa.ArrowInvalid as err:
        if "UTF8" in str(err) or "UTF-8" in str(err):
            raise invalid_utf8_error(path) from None
        for column, kind in types.items():
            bad = _first_non_number(path, names, column) if kind == pa.float64() else None
            if bad is not None:
                line, value = bad
                expected = "Unix seconds, e.g. 1577923200" if column == "timestamp" else "a number"
                raise DataError(f"{path}:{line}: {column} {value!r} is not a number (expected {expected})") from None
        raise DataError(f"{path}: {err}") from None


def _first_non_number(path: Path, names: list[str], column: str) -> tuple[int, str] | None:
    """(line number, value) of the first row whose ``column`` does not read as a number."""
    index = names.index(column)
    with open(path, encoding="utf-8-sig") as f:
        next(f, None)
        for number, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            value = fields[index] if index < len(fields) else ""
            try:
                float(value)
            except ValueError:
                return number, value
    return None


def _log(path: Path, table: pa.Table, rating: str | None) -> InteractionLog:
    if table.num_rows == 0:
        raise DataError(f"{path}: no interactions")
    for column in ("user_id", "item_id", "timestamp"):
        if table.column(column).null_count:
            raise DataError(f"{path}: column {column!r} has {table.column(column).null_count} empty value(s)")
    ratings = table.column(rating).to_numpy() if rating else None
    return InteractionLog(
        table.column("user_id").to_numpy(zero_copy_only=False).astype(str),
        table.column("item_id").to_numpy(zero_copy_only=False).astype(str),
        table.column("timestamp").to_numpy().astype(np.float64),
        None if ratings is None else ratings.astype(np.float64),
        str(path),
    )


@names_invalid_utf8
def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark some editors write is not part of the header
        line = f.readline().rstrip("\r\n")
    if not line:
        raise DataError(f"{path}: empty file (expected a header line)")
    return line.split("\t")


def _read_named(path: Path, names: list[str]) -> InteractionLog:
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in names]
    if missing:
        raise DataError(f"{path}: header {names} lacks column(s) {missing}")
    rating = "rating" if "rating" in names else None
    types = {"user_id": pa.string(), "item_id": pa.string(), "timestamp": pa.float64()}
    if rating:
        types["rating"] = pa.float64()
    return _log(path, _read_table(path, names, types), rating)


def read_tsv_interactions(path: Path) -> InteractionLog:
    return _read_named(path, _header(path))


def read_recbole_interactions(path: Path) -> InteractionLog:
    """RecBole headers name each field as ``name:type``."""
    return _read_named(path, [field.split(":", 1)[0] for field in _header(path)])


def stable_chronological_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Row order grouping users (in order of first appearance), chronological
    within a user, file order breaking timestamp ties."""
    _, first_seen, codes = np.unique(users, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first_seen, kind="stable"), kind="stable")
    return np.lexsort((np.arange(len(users)), timestamps, rank[codes]))
