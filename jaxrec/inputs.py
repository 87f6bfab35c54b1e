"""What a config names for a run to read (a model, a dataset, an earlier run):
declared by each config section beside its fields, so that the launcher
checks them before anything starts and a pipeline links the stages they name,
without a central table of every task's fields."""

from __future__ import annotations

import dataclasses
import functools
import typing


@dataclasses.dataclass(frozen=True)
class InputField:
    """A config field that names something a run reads; a section's class lists its
    own in a class attribute ``INPUTS`` (field name -> InputField)."""

    what: str
    """What it expects, for the error when it names nothing that exists."""
    run: bool = False
    """It may name a run directory (in a pipeline: a stage)."""
    asset: bool = False
    """It may name a named asset instead of a path."""


@functools.cache
def input_fields(config_class: type) -> dict[tuple[str, ...], InputField]:
    """Path of fields (such as ``("recommender", "items", "embeddings")``) -> :class:`InputField`
    over the sections of a config class and the sections nested in them (read once per class:
    pipelines ask for every stage, several times)."""
    found, hints = {}, typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        section = hints.get(field.name)
        if not dataclasses.is_dataclass(section):
            continue
        for key, declared in getattr(section, "INPUTS", {}).items():
            found[(field.name, key)] = declared
        for path, declared in input_fields(section).items():
            found[(field.name, *path)] = declared
    return found


def value_at(node, path: tuple[str, ...]):
    """The value at ``path`` in a config object or a config tree (nested dicts); None where
    a section on the way is missing."""
    for part in path:
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node is None:
            return None
    return node
