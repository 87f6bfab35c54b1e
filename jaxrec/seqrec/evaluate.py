"""Evaluation of a trained recommender on the validation or test split:
full-ranking (and optionally sampled) Recall@K / NDCG@K, grouped by the target
item's popularity and by the user's history length, and shuffle diagnostics.

Users are scored in fixed-size batches (the last one padded), so each jitted
function compiles once per run.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jaxrec.eval.ranking import full_ranking_ranks, metrics_from_ranks, sample_negatives, sampled_ranks
from jaxrec.progress import progress_bar
from jaxrec.seqrec.histories import shuffle_histories
from jaxrec.seqrec.spec import EvalSpec


def batched(fn: Callable[..., jax.Array], *arrays: np.ndarray, batch_size: int, progress: str | None = None) -> np.ndarray:
    """``fn`` over the rows of ``arrays`` in batches of exactly ``batch_size``
    (the last padded with zeros), concatenated; with a ``progress`` label, a
    progress bar over the rows."""
    count = len(arrays[0])
    padded = [np.concatenate([a, np.zeros((-count % batch_size, *a.shape[1:]), a.dtype)]) for a in arrays]
    out = []
    with progress_bar(progress or "", total=count, enabled=None if progress else False) as advance:
        for i in range(0, count, batch_size):
            out.append(np.asarray(fn(*(a[i : i + batch_size] for a in padded))))
            advance(min(batch_size, count - i))
    return np.concatenate(out)[:count]


def _mean(per_user: dict[str, np.ndarray], rows: np.ndarray | slice = slice(None)) -> dict[str, float]:
    return {name: float(np.mean(values[rows])) for name, values in per_user.items()}


def _per_user(ranks: np.ndarray, spec: EvalSpec) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in metrics_from_ranks(ranks, tuple(spec.ks)).items()}


def full_ranking(user_vectors, item_vectors, targets, history, spec: EvalSpec) -> dict[str, np.ndarray]:
    """Per-user full-ranking metrics."""
    rank = lambda users, seen, target: full_ranking_ranks(users, item_vectors, target, seen, spec.exclude_history)
    return _per_user(batched(rank, user_vectors, history, targets, batch_size=spec.batch_size), spec)


def popularity_groups(popularity: np.ndarray, spec: EvalSpec) -> dict[str, np.ndarray]:
    """Item id -> group masks: 'popular' / 'tail' by ``popular_share``, 'cold'
    by ``cold_share`` if set, and ``popularity_bins`` groups of equally many
    items from least to most popular."""
    order = np.argsort(-popularity[1:], kind="stable") + 1  # most popular first
    popular = np.zeros(len(popularity), bool)
    popular[order[: int(np.ceil(spec.popular_share * len(order)))]] = True
    groups = {"popular": popular, "tail": ~popular & (np.arange(len(popularity)) > 0)}
    if spec.cold_share is not None:
        groups["cold"] = np.zeros(len(popularity), bool)
        groups["cold"][order[len(order) - int(np.ceil(spec.cold_share * len(order))) :]] = True
    for b, members in enumerate(np.array_split(order[::-1], spec.popularity_bins)):
        counts = popularity[members]
        mask = np.zeros(len(popularity), bool)
        mask[members] = True
        groups[f"bin{b + 1} ({counts.min()}-{counts.max()} interactions)"] = mask
    return groups


def history_groups(lengths: np.ndarray, edges: list[int]) -> dict[str, np.ndarray]:
    """User masks by number of earlier interactions, split at ``edges``."""
    bounds = [0, *edges, None]
    groups = {}
    for low, high in zip(bounds[:-1], bounds[1:]):
        name = f"{low + 1}-{high}" if high is not None else f">{low}"
        groups[name] = (lengths > low) & (lengths <= high if high is not None else True)
    return groups


def _grouped(per_user: dict[str, np.ndarray], groups: dict[str, np.ndarray]) -> dict[str, dict]:
    return {name: {"users": int(rows.sum()), **_mean(per_user, rows)} for name, rows in groups.items() if rows.any()}


def evaluate(
    user_vectors: Callable[[np.ndarray], np.ndarray],
    item_vectors: np.ndarray,
    history: np.ndarray,
    targets: np.ndarray,
    history_lengths: np.ndarray,
    popularity: np.ndarray,
    spec: EvalSpec,
    seed: int,
    diagnostics: bool = True,
) -> dict:
    """``user_vectors(histories) -> [U, H]``. With ``diagnostics``: sampled
    metrics, groups and the shuffle test as well as the overall full ranking."""
    users = user_vectors(history)
    per_user = full_ranking(users, item_vectors, targets, history, spec)
    result = {"users": len(targets), "full": _mean(per_user)}
    if not diagnostics:
        return result
    rng = np.random.default_rng([seed, 2])
    if spec.sampled_negatives:
        seen = [row[row > 0] for row in history]
        negatives = sample_negatives(rng, len(item_vectors) - 1, seen, targets, spec.sampled_negatives)
        rank = lambda u, target, negative: sampled_ranks(u, item_vectors, target, negative)
        ranks = batched(rank, users, targets, negatives, batch_size=spec.batch_size)
        result["sampled"] = _mean(_per_user(ranks, spec))
    by_item = {name: mask[targets] for name, mask in popularity_groups(popularity, spec).items()}
    result["by_popularity"] = _grouped(per_user, by_item)
    result["by_history_length"] = _grouped(per_user, history_groups(history_lengths, spec.history_bins))
    if spec.shuffle:
        shuffled = shuffle_histories(history, rng)
        shuffled_users = user_vectors(shuffled)
        cosine = np.sum(users * shuffled_users, axis=1) / (
            np.linalg.norm(users, axis=1) * np.linalg.norm(shuffled_users, axis=1) + 1e-12
        )
        result["shuffled"] = {
            "full": _mean(full_ranking(shuffled_users, item_vectors, targets, shuffled, spec)),
            "cosine_to_original": float(np.mean(cosine)),
        }
    return result
