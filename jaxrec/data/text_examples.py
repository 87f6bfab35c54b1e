"""Training examples for the objectives, built per batch from item text and
user sequences (a first version; the data layer's builders will extend it)."""

from __future__ import annotations

import numpy as np

from jaxrec.shapes import bucket_length, pad_sequences


def pad_batch(sequences: list[list[int]], pad_id: int, max_length: int, side: str = "right") -> dict[str, np.ndarray]:
    """Ids and attention mask padded to the batch's length bucket (capped at
    ``max_length``), so training compiles once per bucket, not per batch."""
    length = min(bucket_length(max(len(s) for s in sequences)), max_length)
    ids, mask = pad_sequences(sequences, length, pad_id, side)
    return {"input_ids": ids, "attention_mask": mask}


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


def attribute_view(attributes: dict, rng: np.random.Generator, drop: float, rounding: str = "floor") -> dict:
    """One SCFT augmentation: the attributes shuffled and a share ``drop`` of
    them removed, that count rounded down (the authors' code) or to the
    nearest ("round"); at least one kept."""
    keys = list(attributes)
    rng.shuffle(keys)
    dropped = int(np.floor(drop * len(keys))) if rounding == "floor" else int(round(drop * len(keys)))
    keep = max(1, len(keys) - dropped)
    return {k: attributes[k] for k in keys[:keep]}


def csft_targets(sequences: list[list[int]], holdout: int = 2) -> np.ndarray:
    """(user, position) pairs whose item is a CSFT target: every position but
    the first of each user's training prefix (the last ``holdout`` items are
    validation and test targets and never appear)."""
    pairs = [(u, t) for u, seq in enumerate(sequences) for t in range(1, len(seq) - holdout)]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def csft_example(tokenizer, history: list[str], target: str, max_length: int,
                 separator: str = "") -> tuple[list[int], list[int]]:
    """History titles joined with ", ", ``separator``, then the target title, a
    newline and EOS (the history's tokens and the target's are tokenized apart
    and concatenated, as the authors' code does); the history is cut from the
    left to fit ``max_length``. Returns (ids, target mask)."""
    target_ids = tokenizer(target + "\n", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    history_ids = tokenizer(", ".join(history) + separator, add_special_tokens=False)["input_ids"]
    room = max(max_length - len(target_ids), 0)
    history_ids = history_ids[len(history_ids) - room :] if room else []
    ids = (history_ids + target_ids)[-max_length:]
    return ids, ([0] * len(history_ids) + [1] * len(target_ids))[-max_length:]
