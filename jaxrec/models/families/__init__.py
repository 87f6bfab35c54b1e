"""Model families: each module owns what differs between decoder families -
its HF config fields, its conversion rules and its export fields - over the
common decoder (``core``). ``family(model_type)`` picks one; a new family is
one new module added to ``FAMILIES``.

A family module defines ``MODEL_TYPE``, ``ARCHITECTURE`` (the transformers
class name), ``config_fields(hf) -> dict`` (DecoderConfig fields read from an
HF config), ``rules(config) -> list[Rule]`` and ``hf_fields(config) -> dict``
(what an exported config.json adds for the family).
"""

from __future__ import annotations

from types import ModuleType

from jaxrec.models.families import llama, qwen2, qwen3

FAMILIES: dict[str, ModuleType] = {f.MODEL_TYPE: f for f in (llama, qwen2, qwen3)}


class UnknownFamilyError(ValueError):
    pass


def family(model_type: str | None) -> ModuleType:
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UnknownFamilyError(f"model_type={model_type!r} is not supported: jaxrec implements "
                                 f"{', '.join(FAMILIES)}") from None
