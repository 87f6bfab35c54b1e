"""Configuration of the ``llmsrec`` task (section ``distill``)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class DistillSpec:
    teacher: str | None = None
    """A finished seqrec run directory of an ID-based SASRec (its ``best/`` state is the frozen teacher)."""
    max_history: int = 10
    """Most recent items in a user prompt."""
    title_tokens: int = 32
    """Tokens kept of each quoted title."""
    negatives: int = 3
    """Items sampled per user and step as the retrieval loss's negatives (never the target)."""
    head_hidden: int = 2048
    out_dim: int = 128
    retrieval_weight: float = 1.0
    distillation_weight: float = 1.0
    uniformity_weight: float = 1.0

    def __post_init__(self):
        for name in ("max_history", "title_tokens", "negatives", "head_hidden", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
