"""Trainable vs frozen as a partition of the model's variables.

Variables are addressed by slash-joined paths that start with the collection:
``params/layers/attn/q/kernel``, ``lora/layers/mlp/up/a``. A list of regular
expressions selects the trainable leaves (searched anywhere in the path); the
rest are frozen. LoRA, full fine-tuning and "only these subtrees" are the same
mechanism with different patterns.
"""

from __future__ import annotations

import re
from typing import Iterable

from flax import traverse_util

MODE_PATTERNS = {
    "lora": ("^lora/",),
    "full": ("^params/",),
}


def trainable_patterns(mode: str, subtrees: Iterable[str] = ()) -> tuple[str, ...]:
    if mode == "subtrees":
        patterns = tuple(subtrees)
        if not patterns:
            raise ValueError("mode 'subtrees' needs at least one pattern in trainable.subtrees")
        return patterns
    if mode not in MODE_PATTERNS:
        raise ValueError(f"unknown trainable mode {mode!r}; choose lora, full or subtrees")
    return MODE_PATTERNS[mode]


def split(variables: dict, patterns: Iterable[str]) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts holding disjoint leaves of ``variables``."""
    compiled = [re.compile(p) for p in patterns]
    flat = traverse_util.flatten_dict(variables, sep="/")
    chosen = {path for path in flat if any(p.search(path) for p in compiled)}
    unmatched = [p.pattern for p in compiled if not any(p.search(path) for path in flat)]
    if unmatched:
        sample = ", ".join(sorted(flat)[:6])
        raise ValueError(f"trainable pattern(s) {unmatched} match no variable (paths look like: {sample}, ...)")
    trainable = {k: v for k, v in flat.items() if k in chosen}
    frozen = {k: v for k, v in flat.items() if k not in chosen}
    return traverse_util.unflatten_dict(trainable, sep="/"), traverse_util.unflatten_dict(frozen, sep="/")


def combine(trainable: dict, frozen: dict) -> dict:
    flat = traverse_util.flatten_dict(frozen, sep="/")
    flat.update(traverse_util.flatten_dict(trainable, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")
