"""Item texts built from an item's attributes: LLMEmb's attribute prompt,
which the SCFT objective trains on and the encode task embeds."""

from __future__ import annotations


def item_attributes(titles: list[str], attributes: list[dict]) -> list[dict]:
    """Each item's attributes for its prompt, the title first."""
    return [{"title": title, **extra} for title, extra in zip(titles, attributes)]


def attribute_text(attributes: dict, domain: str, value_chars: int = 100) -> str:
    """LLMEmb's item prompt: an instruction line, then "key is value; ..."."""
    parts = []
    for key, value in attributes.items():
        text = ", ".join(value) if isinstance(value, list) else str(value)
        parts.append(f"{key} is {text[:value_chars]}")
    return f"The {domain} item has the following attributes:\n" + "; ".join(parts)
