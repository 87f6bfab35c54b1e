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
def input_fields(config_class: type) -> dict[tuple[str, str], InputField]:
    """(section, field) -> :class:`InputField` over the sections of a config class
    (read once per class: pipelines ask for every stage, several times)."""
    hints = typing.get_type_hints(config_class)
    found = {}
    for section in dataclasses.fields(config_class):
        for key, field in getattr(hints.get(section.name), "INPUTS", {}).items():
            found[(section.name, key)] = field
    return found
