"""The pieces of a conversion table: how one HF tensor maps onto one Flax
parameter, with a layout transform and its inverse. Each model family builds
its table from these (``jaxrec.models.families``)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    """A pair of inverse array transforms between HF and Flax layouts."""

    to_flax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


IDENTITY = Layout(lambda w: w, lambda w: w)
TRANSPOSE = Layout(lambda w: w.T, lambda w: w.T)


def split_heads_out(heads: int) -> Layout:
    """HF [heads*head_dim, in] <-> Flax [in, heads, head_dim]."""
    return Layout(
        lambda w: w.T.reshape(w.shape[1], heads, w.shape[0] // heads),
        lambda k: k.reshape(k.shape[0], -1).T,
    )


def split_heads_in(heads: int) -> Layout:
    """HF [out, heads*head_dim] <-> Flax [heads, head_dim, out]."""
    return Layout(
        lambda w: w.T.reshape(heads, w.shape[1] // heads, w.shape[0]),
        lambda k: k.reshape(-1, k.shape[-1]).T,
    )


def split_heads_bias(heads: int) -> Layout:
    """HF [heads*head_dim] <-> Flax [heads, head_dim]."""
    return Layout(lambda b: b.reshape(heads, -1), lambda b: b.reshape(-1))


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
