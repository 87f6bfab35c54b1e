"""Item tables (id, title, attributes) from the formats jaxrec reads.

- a directory with ``items.tsv`` (header ``item_id<TAB>title``);
- RecBole atomic ``.item`` files (``name:type`` headers; the first field whose
  name contains ``title`` is the title, the others become attributes);
- a named dataset asset such as ``ml-100k``.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from jaxrec import assets
from jaxrec.data.encoding import names_invalid_utf8
from jaxrec.errors import DataError


@dataclasses.dataclass
class ItemTable:
    ids: list[str]
    titles: list[str]
    attributes: list[dict[str, str | list[str]]]
    source: str

    def __len__(self) -> int:
        return len(self.ids)


@names_invalid_utf8
def read_tsv_items(path: Path) -> ItemTable:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None:
            raise DataError(f"{path}: empty file (expected a header item_id<TAB>title)")
        if header[:2] != ["item_id", "title"]:
            raise DataError(f"{path}: header is {header}, expected item_id<TAB>title")
        ids, titles = [], []
        for line_number, row in enumerate(rows, start=2):
            if len(row) < 2:
                raise DataError(f"{path}:{line_number}: expected 2 tab-separated columns, got {len(row)}")
            ids.append(row[0])
            titles.append(row[1].strip())
    return _checked(ItemTable(ids, titles, [{} for _ in ids], str(path)))


@names_invalid_utf8
def read_recbole_items(path: Path) -> ItemTable:
    with open(path, encoding="utf-8-sig") as f:
        header_line = f.readline().rstrip("\n")
        if not header_line:
            raise DataError(f"{path}: empty file (expected a RecBole header like item_id:token<TAB>...)")
        columns = [field.split(":", 1) for field in header_line.split("\t")]
        if any(len(c) != 2 for c in columns):
            raise DataError(f"{path}: header fields must look like name:type, got {header_line!r}")
        names = [name for name, _ in columns]
        if "item_id" not in names:
            raise DataError(f"{path}: no item_id column (columns: {', '.join(names)})")
        title_column = next((n for n in names if "title" in n), None)
        if title_column is None:
            raise DataError(f"{path}: no title column (a column whose name contains 'title'; columns: {', '.join(names)})")
        ids, titles, attributes = [], [], []
        for line_number, line in enumerate(f, start=2):
            values = line.rstrip("\n").split("\t")
            if len(values) != len(columns):
                raise DataError(f"{path}:{line_number}: expected {len(columns)} fields, got {len(values)}")
            record = {}
            for (name, kind), value in zip(columns, values):
                if name == "item_id":
                    ids.append(value)
                elif name == title_column:
                    titles.append(value.strip())
                elif value:
                    record[name] = value.split() if kind.endswith("_seq") else value
            attributes.append(record)
    return _checked(ItemTable(ids, titles, attributes, str(path)))


def _checked(table: ItemTable) -> ItemTable:
    if not table.ids:
        raise DataError(f"{table.source}: no items")
    seen = set()
    for item_id in table.ids:
        if item_id in seen:
            raise DataError(f"{table.source}: item id {item_id!r} appears more than once")
        seen.add(item_id)
    return table


def read_items(name_or_path: str | Path) -> ItemTable:
    """The item table of a dataset given by asset name, directory or file."""
    path = assets.resolve(name_or_path)
    if path.is_dir():
        if (path / "items.tsv").exists():
            return read_tsv_items(path / "items.tsv")
        item_files = sorted(path.glob("*.item"))
        if len(item_files) == 1:
            return read_recbole_items(item_files[0])
        raise DataError(f"{path}: expected items.tsv or exactly one RecBole .item file, found {len(item_files)} .item files")
    if path.suffix == ".item":
        return read_recbole_items(path)
    if path.suffix == ".tsv":
        return read_tsv_items(path)
    raise DataError(f"{path}: unknown item file format (expected items.tsv or a RecBole .item file)")
