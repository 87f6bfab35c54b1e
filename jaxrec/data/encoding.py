"""Invalid UTF-8 in a data file is an error that names the file and line."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

from jaxrec.errors import DataError


def first_invalid_utf8_line(path: Path) -> tuple[int, str] | None:
    """(line number, reason) of the first line that is not valid UTF-8."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, f"byte {line[err.start:err.start + 1]!r} at column {err.start + 1}: {err.reason}"
    return None


def invalid_utf8_error(path: Path) -> DataError:
    found = first_invalid_utf8_line(path)
    where, reason = (f"{path}:{found[0]}", found[1]) if found else (str(path), "undecodable bytes")
    return DataError(f"{where}: not valid UTF-8 ({reason}); re-encode the file as UTF-8")


def names_invalid_utf8(read):
    """Decorate a reader whose first argument is the file's path."""

    @functools.wraps(read)
    def wrapper(path, *args, **kwargs):
        try:
            return read(path, *args, **kwargs)
        except UnicodeDecodeError:
            raise invalid_utf8_error(Path(path)) from None

    return wrapper
