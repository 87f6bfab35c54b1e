"""Users' chronological item sequences from interaction files.

- a directory with ``interactions.tsv`` (``user_id<TAB>item_id<TAB>timestamp``);
- a RecBole ``.inter`` file (``user_id:token``, ``item_id:token``, ``timestamp:float``).

Sorting is stable: within a user, equal timestamps keep the file order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxrec import assets
from jaxrec.data.items import DataError


@dataclasses.dataclass
class Sequences:
    users: list[str]
    items: list[list[str]]
    source: str

    def __len__(self) -> int:
        return len(self.users)


def _columns(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if not rows:
        raise DataError(f"{path}: no interactions")
    return header, rows


def _sequences(path: Path, header: list[str], rows: list[list[str]], names: tuple[str, str, str]) -> Sequences:
    try:
        columns = [header.index(name) for name in names]
    except ValueError:
        raise DataError(f"{path}: header {header} lacks one of the columns {list(names)}") from None
    table = np.asarray(rows, dtype=object)
    if table.ndim != 2 or table.shape[1] != len(header):
        raise DataError(f"{path}: rows do not all have {len(header)} tab-separated fields")
    users, items = table[:, columns[0]].astype(str), table[:, columns[1]].astype(str)
    try:
        times = table[:, columns[2]].astype(np.float64)
    except ValueError:
        raise DataError(f"{path}: column {names[2]!r} has non-numeric values") from None
    user_codes, first_seen = np.unique(users, return_index=True)
    code_of = np.searchsorted(user_codes, users)
    order = np.lexsort((np.arange(len(users)), times, code_of))
    boundaries = np.flatnonzero(np.diff(code_of[order])) + 1
    groups = np.split(order, boundaries)
    by_first = np.argsort(first_seen, kind="stable")  # users in order of first appearance
    return Sequences(
        [str(user_codes[u]) for u in by_first], [items[groups[u]].tolist() for u in by_first], str(path)
    )


def read_sequences(name_or_path: str | Path) -> Sequences:
    path = assets.resolve(name_or_path)
    if path.is_dir():
        if (path / "interactions.tsv").exists():
            path = path / "interactions.tsv"
        else:
            found = sorted(path.glob("*.inter"))
            if len(found) != 1:
                raise DataError(f"{path}: expected interactions.tsv or exactly one RecBole .inter file")
            path = found[0]
    header, rows = _columns(path)
    if path.suffix == ".inter":
        header = [field.split(":", 1)[0] for field in header]
    return _sequences(path, header, rows, ("user_id", "item_id", "timestamp"))
