"""The pieces of a conversion table: how one HF tensor maps onto one Flax
parameter, with a layout transform and its inverse. Each model family builds
its table from these (``jaxrec.models.families``)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from einops import rearrange


@dataclasses.dataclass(frozen=True)
class Layout:
    """A pair of inverse array transforms between HF and Flax layouts."""

    to_flax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Layout(lambda w: w, lambda w: w)
TRANSPOSE = Layout(lambda w: w.T, lambda w: w.T)


def split_heads_out(heads: int) -> Layout:
    """HF [heads*head_dim, in] <-> Flax [in, heads, head_dim]."""
    return Layout(lambda w: rearrange(w, "(h d) i -> i h d", h=heads), lambda k: rearrange(k, "i h d -> (h d) i"))


def split_heads_in(heads: int) -> Layout:
    """HF [out, heads*head_dim] <-> Flax [heads, head_dim, out]."""
    return Layout(lambda w: rearrange(w, "o (h d) -> h d o", h=heads), lambda k: rearrange(k, "h d o -> o (h d)"))


def split_heads_bias(heads: int) -> Layout:
    """HF [heads*head_dim] <-> Flax [heads, head_dim]."""
    return Layout(lambda b: rearrange(b, "(h d) -> h d", h=heads), lambda b: rearrange(b, "h d -> (h d)"))


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_key: str
    path: tuple[str, ...]
    layout: Layout = IDENTITY

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.hf_key

    def hf_keys(self, num_layers: int) -> list[str]:
        if self.per_layer:
            return [self.hf_key.format(layer=i) for i in range(num_layers)]
        return [self.hf_key]
