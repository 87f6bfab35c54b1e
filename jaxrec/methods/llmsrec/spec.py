"""Configuration of the ``llmsrec`` task (section ``distill``).

Defaults follow the authors' public code; the paper's reading of a choice,
where it differs, is the other value of the option."""

from __future__ import annotations

import dataclasses

from jaxrec.inputs import InputField
from jaxrec.methods.llmsrec.distill import REDUCTIONS, DistillWeights

ACTIVATIONS = ("leaky_relu", "gelu", "relu")


@dataclasses.dataclass
class DistillSpec:
    INPUTS = {"teacher": InputField("a finished seqrec run directory", run=True)}

    teacher: str | None = None
    """A finished seqrec run directory of an ID-based SASRec (its ``best/`` state is the frozen teacher)."""
    max_history: int = 10
    """Most recent items in a user prompt."""
    title_tokens: int = 32
    """Tokens kept of each quoted title."""
    dates: bool = True
    """Each history item's interaction date in the user prompt ("Item No.1, Time: 2014-07-14, ...")."""
    negatives: int = 3
    """Items sampled per user and step as the retrieval loss's negatives: distinct, never among the user's
    training items."""
    head_hidden: int = 2048
    out_dim: int = 128
    head_activation: str = "leaky_relu"
    """Activation inside f_I, f_user and f_item (each Dense -> LayerNorm -> activation -> Dense)."""
    teacher_activation: str = "gelu"
    """Activation inside f_CF, the teacher-side head."""
    retrieval_weight: float = 1.0
    distillation_weight: float = 1.0
    uniformity_weight: float = 1.0
    distillation_reduction: str = "mean"
    """"mean": the squared error averaged over every element (the authors' MSELoss); "sum": summed over the
    out_dim dimensions per user (out_dim times larger)."""
    item_start_cache_mb: float = 4096
    """The keys and values of every item prompt's start (template and title) are computed once per catalogue
    and kept, when they take at most this many MB per process (all its devices' copies together); a larger
    catalogue recomputes the candidates' starts at every step. 0: never keep them."""
    log_uniformity: bool = False
    """false: the mean of exp(-2 d^2) over pairs (the authors' code); true: its log (the usual definition)."""

    def __post_init__(self):
        for name in ("max_history", "title_tokens", "negatives", "head_hidden", "out_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("head_activation", "teacher_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {getattr(self, name)!r}")
        if self.distillation_reduction not in REDUCTIONS:
            raise ValueError(f"distillation_reduction must be one of {REDUCTIONS}, got {self.distillation_reduction!r}")

    def weights(self) -> DistillWeights:
        return DistillWeights(self.retrieval_weight, self.distillation_weight, self.uniformity_weight,
                              self.distillation_reduction, self.log_uniformity)
