"""Typed configuration machinery: dataclasses filled from YAML (read with a
SafeLoader: no objects are ever constructed) plus ``key.path=value`` overrides.

A file may start from another: ``extends: base.yaml`` (relative to the file)
reads the base first and merges this file over it, mappings key by key and
every other value (lists included) replacing the base's.

Unknown keys and values of the wrong type are errors that name the key and
list the valid ones; nothing is silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml

from jaxrec.errors import ConfigError


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no object construction) that also reads exponent
    floats without a dot, such as 1e-9, as numbers: YAML 1.1 makes them strings."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def _safe_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)


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


def _moved_to(cls, key: str, value) -> tuple[str, ...] | None:
    """Where today's ``cls`` keeps a key that it has moved (its ``MOVED_KEYS``: old key -> path
    under the class), or None: a key that is still a field keeps its place unless its value is
    of the old kind (``items: llm`` where ``items`` is now a section)."""
    path = getattr(cls, "MOVED_KEYS", {}).get(key)
    if path is None or (key in {f.name for f in dataclasses.fields(cls)} and isinstance(value, Mapping)):
        return None
    return path


def build(cls, data: Any, prefix: str = "", stored: bool = False):
    """Instantiate dataclass ``cls`` from a mapping, checking every key and type; ``stored``:
    a tree a run stored, read in today's shape first (:func:`as_stored_now`)."""
    where = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    if stored:
        data = as_stored_now(cls, data)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        moved = _moved_to(cls, key, data[key])
        if moved is not None:
            raise ConfigError(f"'{prefix}{key}' is now '{prefix}{'.'.join(moved)}'; valid keys under {where}: "
                              f"{', '.join(fields)}")
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


def as_stored_now(cls, data):
    """A config tree that a run stored, in the shape of today's ``cls``: a key that a class has
    moved (its ``MOVED_KEYS``: old key -> path under the class) goes to its new place, in nested
    sections too. A config a user writes gets an error naming the new place instead (:func:`build`)."""
    if not isinstance(data, Mapping) or not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    out = {key: as_stored_now(hints.get(key), value) for key, value in data.items()
           if _moved_to(cls, key, value) is None}
    for key, value in data.items():
        moved = _moved_to(cls, key, value)
        if moved is not None:
            *sections, name = moved
            node = out
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = value
    return out


def path_now(cls, dotted: str) -> str:
    """A dotted key that a run stored (such as the field an input was read through), as
    today's ``cls`` names it: ``recommender.embeddings`` -> ``recommender.items.embeddings``."""
    tree = node = {}
    *sections, leaf = dotted.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = None  # a leaf value: the key itself, not a section of today's shape
    path, node = [], as_stored_now(cls, tree)
    while isinstance(node, dict):
        (key, node), = node.items()
        path.append(key)
    return ".".join(path)


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


def merge_trees(base: dict, over: dict) -> dict:
    """A new tree: ``over`` merged into ``base``, mappings key by key and anything
    else replaced; it shares nothing with either."""
    merged = {}
    for key in {**base, **over}:
        if isinstance(over.get(key), dict) and isinstance(base.get(key), dict):
            merged[key] = merge_trees(base[key], over[key])
        else:
            merged[key] = copy.deepcopy(over[key] if key in over else base[key])
    return merged


def _unshared(node):
    """A copy in which no two places are the same object: a YAML alias (``*loop``)
    becomes its own copy, so an override of one place leaves the others alone."""
    if isinstance(node, dict):
        return {key: _unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unshared(value) for value in node]
    return node


def _read_file(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    try:
        tree = _safe_load(path.read_text())
    except FileNotFoundError:
        if extended_by:
            raise ConfigError(f"{extended_by[-1]}: extends {path}, which does not exist") from None
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if tree is None:
        raise ConfigError(f"{path}: the file is empty; write at least task: <name> (or stages: for a pipeline); "
                          "python -m jaxrec.launch --help lists the tasks")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    tree = _unshared(tree)
    base = tree.pop("extends", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected the path of a YAML config, got {base!r}")
    base_path = path.parent / base
    chain = (*extended_by, path)
    if base_path.resolve() in {p.resolve() for p in chain}:
        raise ConfigError(f"{path}: extends {base}, which extends it back: "
                          + " -> ".join(str(p) for p in (*chain, base_path)))
    return merge_trees(_includes_seen_from(_read_file(base_path, chain), base_path.parent, path.parent), tree)


def include_entries(includes) -> list:
    """A pipeline's ``include``: one entry (FILE or {file: FILE, stages: [...]}) or a list of them, as a list."""
    if isinstance(includes, list):
        return includes
    return [includes] if includes else []


def _includes_seen_from(tree: dict, base_dir: Path, here: Path) -> dict:
    """A pipeline's ``include`` paths are relative to its file: a base's, as the
    extending file in ``here`` reads them."""
    def moved(file):
        return file if not isinstance(file, str) or Path(file).is_absolute() else os.path.relpath(base_dir / file, here)

    if not tree.get("include"):
        return tree
    entries = [{**e, "file": moved(e.get("file"))} if isinstance(e, dict) else moved(e)
               for e in include_entries(tree["include"])]
    return {**tree, "include": entries}


def read_tree(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """A YAML config file (or nothing) as a nested dict, with ``key.path=value`` overrides applied."""
    tree = _read_file(Path(path)) if path is not None else {}
    for assignment in overrides:
        apply_override(tree, assignment)
    return tree


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def non_default_fields(spec) -> dict:
    """The fields of dataclass ``spec`` whose values differ from the class defaults
    (nested dataclasses likewise). What identifies a run by its settings this way
    stays the same when a later version adds an option at its default."""
    out = {}
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        if dataclasses.is_dataclass(value):
            nested = non_default_fields(value)
            if nested:
                out[field.name] = nested
            continue
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = dataclasses.MISSING
        if value != default:
            out[field.name] = value
    return out


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def culprit_override(load, overrides: list[str]) -> str | None:
    """The ``--set`` to blame when ``load(overrides)`` fails: None when the
    config fails without any override (the file is wrong), else the first
    override that fails alone, else all of them together."""
    try:
        load([])
    except ConfigError:
        return None
    for assignment in overrides:
        try:
            load([assignment])
        except ConfigError:
            return assignment
    return " --set ".join(overrides)
