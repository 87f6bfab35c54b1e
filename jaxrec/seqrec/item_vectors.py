"""Item representations for the sequential recommenders: trainable ID
embeddings, or frozen LLM embeddings (optionally PCA-reduced) through an
adapter. Every table has num_items + 1 rows; row 0 (padding) is zero."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import DataError


CONDITIONINGS = ("none", "scale", "center_scale", "standardize", "whiten")


@dataclasses.dataclass(frozen=True)
class RowTransform:
    """An affine map of item rows fitted once on a catalogue, ``(x - shift) / scale``,
    then an optional projection: how a frozen matrix is conditioned (and PCA-reduced),
    kept so that items added after training are treated exactly as the catalogue was."""

    shift: np.ndarray
    scale: np.ndarray
    projection: np.ndarray | None = None
    """[dim, k] principal directions; applied to the conditioned rows minus ``projection_shift``."""
    projection_shift: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = (np.asarray(x, np.float64) - self.shift) / self.scale
        if self.projection is not None:
            x = (x - self.projection_shift) @ self.projection
        return x.astype(np.float32)


def fit_conditioning(x: np.ndarray, how: str) -> RowTransform:
    """The rescaling of the rows of a frozen item matrix, fitted on it.

    none: as given (the authors' code); scale: divided by the mean row norm;
    center_scale: the mean row subtracted, then divided by the mean row norm;
    standardize: every dimension to zero mean and unit variance (a constant
    dimension becomes 0), then divided by sqrt(dim), so rows have norm about 1;
    whiten: every principal direction to unit variance (:func:`fit_whitening`).
    """
    if how not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning {how!r}; choose one of {', '.join(CONDITIONINGS)}")
    if how == "whiten":
        return fit_whitening(x)
    x = np.asarray(x, np.float64)
    shift = x.mean(axis=0) if how in ("center_scale", "standardize") else np.zeros(x.shape[1])
    if how == "none":
        scale = np.ones(x.shape[1])
    elif how == "standardize":
        std = (x - shift).std(axis=0)
        scale = np.where(std > 0, std, 1.0) * np.sqrt(x.shape[1])
    else:
        scale = np.full(x.shape[1], max(float(np.linalg.norm(x - shift, axis=1).mean()), 1e-12))
    return RowTransform(shift, scale)


WHITENING_FLOOR = 1e-4
"""Principal directions whose standard deviation is below this share of the largest are dropped
(numerically zero: whitening would blow up rounding noise)."""


def _principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean row, standard deviation along each principal direction, the directions as rows),
    largest first, of the rows of ``x``."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, singular / np.sqrt(len(x)), vt


def fit_whitening(x: np.ndarray, dim: int | None = None) -> RowTransform:
    """Centred rows rotated onto their principal directions (the top ``dim``, or every
    direction above :data:`WHITENING_FLOOR`), each divided by its standard deviation, then
    by sqrt(directions kept): rows of norm about 1 with an identity covariance up to that
    factor. Mean-pooled LLM rows spread their variance over few directions (SmolLM2's top 5
    of 576 hold a third of it), and a linear adapter trained by gradient descent learns a
    direction at a speed that grows with its variance; whitened, every direction learns alike."""
    mean, std, vt = _principal_axes(x)
    rank = int(np.count_nonzero(std > WHITENING_FLOOR * std[0]))
    if dim is not None and dim > rank:
        raise ValueError(f"cannot keep {dim} whitened components of a {np.shape(x)} matrix of rank about {rank}")
    keep = rank if dim is None else dim
    return dataclasses.replace(fit_conditioning(x, "none"), projection=vt[:keep].T / (std[:keep] * np.sqrt(keep)),
                               projection_shift=mean)


def condition(x: np.ndarray, how: str) -> np.ndarray:
    """Rescale the rows of a frozen item matrix once, before anything reads it (see :func:`fit_conditioning`)."""
    return fit_conditioning(x, how)(x)


def fit_pca(transform: RowTransform, x: np.ndarray, dim: int) -> RowTransform:
    """``transform`` followed by the projection onto the top ``dim`` principal
    components of the transformed rows of ``x``."""
    conditioned = transform(x)
    if dim > min(conditioned.shape):
        raise ValueError(f"cannot keep {dim} components of a {conditioned.shape} matrix")
    mean, _, vt = _principal_axes(conditioned)
    return dataclasses.replace(transform, projection=vt[:dim].T, projection_shift=mean)


def pca(x: np.ndarray, dim: int) -> np.ndarray:
    """Project rows of ``x`` onto their top ``dim`` principal components."""
    return fit_pca(fit_conditioning(x, "none"), x, dim)(x)


def frozen_matrix_transform(raw_rows: np.ndarray, conditioning: str, pca_dim: int | None) -> RowTransform:
    """How a recommender turns the raw item rows it is given into its frozen matrix
    (whitening keeps ``pca_dim`` directions itself, each whitened)."""
    if conditioning == "whiten":
        return fit_whitening(raw_rows, pca_dim)
    transform = fit_conditioning(raw_rows, conditioning)
    return fit_pca(transform, raw_rows, pca_dim) if pca_dim is not None else transform


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
