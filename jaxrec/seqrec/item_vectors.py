"""Item representations for the sequential recommenders: trainable ID
embeddings, or frozen LLM embeddings (optionally PCA-reduced) through an
adapter. Every table has num_items + 1 rows; row 0 (padding) is zero."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import DataError


CONDITIONINGS = ("none", "scale", "center_scale", "standardize")


def condition(x: np.ndarray, how: str) -> np.ndarray:
    """Rescale the rows of a frozen item matrix once, before anything reads it.

    none: as given (the authors' code); scale: divided by the mean row norm;
    center_scale: the mean row subtracted, then divided by the mean row norm;
    standardize: every dimension to zero mean and unit variance (a constant
    dimension becomes 0), then divided by sqrt(dim), so rows have norm about 1.
    """
    if how not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning {how!r}; choose one of {', '.join(CONDITIONINGS)}")
    x = np.asarray(x, np.float64)
    if how == "none":
        return x.astype(np.float32)
    if how in ("center_scale", "standardize"):
        x = x - x.mean(axis=0)
    if how == "standardize":
        std = x.std(axis=0)
        x = x / np.where(std > 0, std, 1.0) / np.sqrt(x.shape[1])
    else:
        x = x / max(float(np.linalg.norm(x, axis=1).mean()), 1e-12)
    return x.astype(np.float32)


def pca(x: np.ndarray, dim: int) -> np.ndarray:
    """Project rows of ``x`` onto their top ``dim`` principal components."""
    if dim > min(x.shape):
        raise ValueError(f"cannot keep {dim} components of a {x.shape} matrix")
    centered = np.asarray(x, np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return (centered @ vt[:dim].T).astype(np.float32)


def load_item_embeddings(matrix_path: str | Path, ids_path: str | Path, item_ids: Sequence[str]) -> np.ndarray:
    """Rows of an ``.npy`` matrix (row i is the item ``ids_path[i]``, as written by
    the encode task) reordered to ``item_ids`` (index 0 = padding), row 0 zero."""
    matrix = np.load(matrix_path, allow_pickle=False)
    ids = json.loads(Path(ids_path).read_text())
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise DataError(f"{matrix_path}: has shape {matrix.shape} but {ids_path} lists {len(ids)} item ids")
    row_of = {str(item): row for row, item in enumerate(ids)}
    missing = [item for item in item_ids[1:] if item not in row_of]
    if missing:
        raise DataError(f"{ids_path}: {len(missing)} item(s) of the dataset have no embedding, e.g. {missing[:5]}")
    table = np.zeros((len(item_ids), matrix.shape[1]), np.float32)
    table[1:] = matrix[[row_of[item] for item in item_ids[1:]]]
    return table


def _zero_padding_row(table: jax.Array) -> jax.Array:
    return table.at[0].set(0.0)


class IDEmbedding(nn.Module):
    num_items: int
    hidden: int
    initializer: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self) -> jax.Array:
        table = self.param("embedding", self.initializer, (self.num_items + 1, self.hidden))
        return _zero_padding_row(table)


ADAPTER_INITS = {"lecun_normal": nn.initializers.lecun_normal(), "xavier_normal": nn.initializers.xavier_normal()}


class FrozenTextAdapter(nn.Module):
    """Frozen item embeddings [num_items + 1, d] through Dense layers of the
    given widths (one layer: LLM2Rec's linear adapter; 768 then 128: LLMEmb's),
    optionally with a LayerNorm on the output. The matrix is an input, not a
    parameter, and gets no gradient."""

    widths: tuple[int, ...]
    initializer: str = "lecun_normal"
    norm: bool = False

    @nn.compact
    def __call__(self, frozen: jax.Array) -> jax.Array:
        x = jax.lax.stop_gradient(jnp.asarray(frozen))
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, kernel_init=ADAPTER_INITS[self.initializer], name=f"dense_{i}")(x)
        if self.norm:
            x = nn.LayerNorm(name="norm")(x)
        return _zero_padding_row(x)
