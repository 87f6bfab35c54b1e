"""How much of what an ID recommender learned about its items a frozen item
matrix holds, measured by a linear probe: a ridge regression from the matrix's
rows to the ID model's item vectors (or to the items' popularity), scored by
R^2 on items it was not fitted on. An adapter that maps frozen rows to item
vectors linearly (LLM2Rec's, LLMEmb's) cannot give an item more than the rows
say about it: a probe R^2 near 0 means the frozen matrix carries next to
nothing of the collaborative structure, whatever the recommender's settings."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.prep import SeqData
from jaxrec.seqrec.histories import item_popularity

LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)


def _folds(count: int, folds: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(count), folds)


def ridge_r2(features: np.ndarray, targets: np.ndarray, lambdas=LAMBDAS, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated R^2 of ridge regressions of ``targets`` [n, t] (or [n]) on
    ``features`` [n, d], both centred on each fold's fitting rows: the residual
    sum of squares of every held-out fold over their total sum of squares around
    the fitting rows' mean, pooled over the folds and the target columns. Returns
    ``{"r2": best over lambdas, "lambda": its lambda, "by_lambda": {lambda: r2}}``;
    the best is chosen on these same folds, so it is a slightly optimistic figure."""
    return ridge_r2s(features, [targets], lambdas, folds, seed)[0]


def ridge_r2s(features: np.ndarray, targets: list[np.ndarray], lambdas=LAMBDAS, folds: int = 5,
              seed: int = 0) -> list[dict]:
    """:func:`ridge_r2` of several targets on the same features, one SVD per fold for all of them."""
    x = np.asarray(features, np.float64)
    ys = [np.asarray(y, np.float64).reshape(len(x), -1) for y in targets]
    residual = np.zeros((len(ys), len(lambdas)))
    total = np.zeros(len(ys))
    for held in _folds(len(x), folds, seed):
        fit = np.setdiff1d(np.arange(len(x)), held)
        x_mean = x[fit].mean(0)
        u, s, vt = np.linalg.svd(x[fit] - x_mean, full_matrices=False)
        held_x = x[held] - x_mean
        for t, y in enumerate(ys):
            y_mean = y[fit].mean(0)
            projected = u.T @ (y[fit] - y_mean)
            held_y = y[held] - y_mean
            total[t] += float((held_y**2).sum())
            for j, lam in enumerate(lambdas):
                weights = vt.T @ ((s / (s**2 + lam))[:, None] * projected)
                residual[t, j] += float(((held_x @ weights - held_y) ** 2).sum())
    results = []
    for t in range(len(ys)):
        by_lambda = {lam: 1.0 - residual[t, j] / total[t] for j, lam in enumerate(lambdas)}
        best = max(by_lambda, key=by_lambda.get)
        results.append({"r2": by_lambda[best], "lambda": best, "by_lambda": by_lambda})
    return results


@dataclasses.dataclass(frozen=True)
class ProbeTargets:
    """What frozen matrices are probed against: the ID vectors and the log training
    counts of the items an ID recommender trained on (items without a training
    interaction keep their initial vectors and are left out)."""

    items: np.ndarray
    """Item ids (rows of a [num_items + 1, d] matrix)."""
    vectors: np.ndarray
    log_counts: np.ndarray

    @classmethod
    def of(cls, data: SeqData, id_table: np.ndarray) -> "ProbeTargets":
        """From a dataset and an ID recommender's item table [num_items + 1, hidden] trained on it."""
        counts = item_popularity(data)
        items = np.flatnonzero(counts > 0)
        items = items[items > 0]
        return cls(items, np.asarray(id_table)[items], np.log1p(counts[items]))

    def score(self, matrix: np.ndarray, folds: int = 5) -> dict:
        """The probe of a [num_items + 1, d] matrix (row = item id): R^2 onto the
        ID vectors and onto the log counts, with each one's ridge lambda."""
        features = np.asarray(matrix)[self.items]
        vectors, counts = ridge_r2s(features, [self.vectors, self.log_counts], folds=folds)
        return {"id_vectors_r2": vectors["r2"], "id_vectors_lambda": vectors["lambda"],
                "log_count_r2": counts["r2"], "log_count_lambda": counts["lambda"]}


def gaussian_matrix(rows: int, width: int, seed: int = 0) -> np.ndarray:
    """The probe's floor: N(0, 1) rows of the given width (what fitting noise scores)."""
    return np.random.default_rng(seed).normal(size=(rows, width)).astype(np.float32)
