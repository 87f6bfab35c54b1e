"""Evaluation of a trained recommender on the validation or test split:
full-ranking (and optionally sampled) Recall@K / NDCG@K, grouped by the target
item's popularity and by the user's history length, and shuffle diagnostics,
each under every protocol evaluated. Sampled negatives are never among the
user's items (its whole sequence, not only the history window the model reads).

Users are scored in fixed-size batches (the last one padded), so each jitted
function compiles once per run.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np

from jaxrec.eval.negatives import UserItems
from jaxrec.eval.ranking import full_ranking_ranks, metrics_from_ranks, sampled_ranks
from jaxrec.progress import progress_bar
from jaxrec.seqrec.histories import evaluation_examples, item_popularity, shuffle_histories
from jaxrec.seqrec.spec import EvalSpec


COLD_GROUP = "held-out cold items"
"""The popularity group of test targets that are held-out cold items (data.cold_items)."""


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
    """Item id -> group masks: 'popular' / 'tail' (tail: fewer than
    ``tail_threshold`` interactions if set, else outside the top
    ``popular_share``), 'cold' by ``cold_share`` if set, and groups by
    interaction count (split at ``popularity_edges`` if set, else
    ``popularity_bins`` groups of equally many items, least popular first).
    Edges are strict as in the authors' code: a count equal to an edge belongs
    to the group above it."""
    real = np.arange(len(popularity)) > 0
    order = np.argsort(-popularity[1:], kind="stable") + 1  # most popular first
    if spec.tail_threshold is not None:
        popular = real & (popularity >= spec.tail_threshold)
    else:
        popular = np.zeros(len(popularity), bool)
        popular[order[: int(np.ceil(spec.popular_share * len(order)))]] = True
    groups = {"popular": popular, "tail": ~popular & real}
    if spec.cold_share is not None:
        groups["cold"] = np.zeros(len(popularity), bool)
        groups["cold"][order[len(order) - int(np.ceil(spec.cold_share * len(order))) :]] = True
    if spec.popularity_edges is not None:
        for name, members in _count_groups(popularity, spec.popularity_edges).items():
            groups[f"{name} interactions"] = members & real
        return groups
    for b, members in enumerate(np.array_split(order[::-1], spec.popularity_bins)):
        counts = popularity[members]
        mask = np.zeros(len(popularity), bool)
        mask[members] = True
        groups[f"bin{b + 1} ({counts.min()}-{counts.max()} interactions)"] = mask
    return groups


def _count_groups(counts: np.ndarray, edges: list[int]) -> dict[str, np.ndarray]:
    """Masks of ``counts`` in [0, e1), [e1, e2), ..., [e_last, inf), named "<5", "5-9", ..., "≥40"."""
    bounds = [0, *edges, None]
    groups = {}
    for low, high in zip(bounds[:-1], bounds[1:]):
        name = f"<{high}" if low == 0 else f"{low}-{high - 1}" if high is not None else f"≥{low}"
        groups[name] = (counts >= low) & (counts < high if high is not None else True)
    return groups


def history_groups(lengths: np.ndarray, edges: list[int]) -> dict[str, np.ndarray]:
    """User masks by number of earlier interactions, split at ``edges``."""
    return _count_groups(lengths, edges)


def _grouped(per_user: dict[str, dict[str, np.ndarray]], groups: dict[str, np.ndarray]) -> dict[str, dict]:
    """Each non-empty group's user count and mean metrics under every protocol."""
    return {name: {"users": int(rows.sum()), **{protocol: _mean(metrics, rows) for protocol, metrics in per_user.items()}}
            for name, rows in groups.items() if rows.any()}


def evaluate(
    user_vectors: Callable[[np.ndarray], np.ndarray],
    item_vectors: np.ndarray,
    history: np.ndarray,
    targets: np.ndarray,
    history_lengths: np.ndarray,
    popularity: np.ndarray,
    user_items: UserItems,
    spec: EvalSpec,
    seed: int,
    diagnostics: bool = True,
    held_out: np.ndarray | None = None,
) -> dict:
    """``user_vectors(histories) -> [U, H]``; row u of the split is user u of
    ``user_items``. With ``diagnostics``: sampled metrics, groups and the
    shuffle test as well as the overall full ranking. ``held_out``: the
    data's cold items, a popularity group of their own (``COLD_GROUP``)."""
    users = user_vectors(history)
    per_user = {"full": full_ranking(users, item_vectors, targets, history, spec)}
    result = {"users": len(targets), "full": _mean(per_user["full"])}
    if not diagnostics:
        return result
    rng = np.random.default_rng([seed, 2])
    negatives = None
    if spec.sampled_negatives:
        negatives = user_items.sample(rng, np.arange(len(targets)), spec.sampled_negatives)
        per_user["sampled"] = sampled(users, item_vectors, targets, negatives, spec)
        result["sampled"] = _mean(per_user["sampled"])
    item_groups = popularity_groups(popularity, spec)
    if held_out is not None and len(held_out):
        item_groups[COLD_GROUP] = np.isin(np.arange(len(popularity)), held_out)
    by_item = {name: mask[targets] for name, mask in item_groups.items()}
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
        if negatives is not None:  # the same negatives as the original histories
            result["shuffled"]["sampled"] = _mean(sampled(shuffled_users, item_vectors, targets, negatives, spec))
    return result


class SplitRanking:
    """A dataset's validation and test splits with what ranking them takes (item
    popularity, every user's items, the held-out cold items), shared by every
    recommender task: the task brings its user and item vectors. Row u of a
    split is user u."""

    def __init__(self, data, spec: EvalSpec, history_length: int):
        self.spec = spec
        self.splits = {part: evaluation_examples(data, part, history_length) for part in ("valid", "test")}
        self.popularity = item_popularity(data)
        self.user_items = UserItems(data.offsets, data.items, data.num_items)
        self.cold = data.cold

    def __call__(self, user_vectors: Callable[[np.ndarray], np.ndarray], item_vectors: np.ndarray, part: str,
                 seed: int, diagnostics: bool) -> dict:
        """:func:`evaluate` on split ``part`` ("valid" or "test")."""
        history, targets, lengths = self.splits[part]
        return evaluate(user_vectors, item_vectors, history, targets, lengths, self.popularity, self.user_items,
                        self.spec, seed, diagnostics, held_out=self.cold)


def best_state_on_test(fitted, test: Callable[[], dict], log=print, who: str = "") -> dict:
    """``test()`` of the state training ended with: the best validation state where
    one was kept (``fitted``: a ``TrainResult``), with the seconds it took."""
    if fitted.best_step is not None:
        log(f"{who}testing the best validation state (step {fitted.best_step})")
    start = time.perf_counter()
    result = test()
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def seeds_summary(results: list[dict]) -> dict:
    """A recommender task's summary of its seeds (``results``: ``{"seed", "training",
    "test"}`` each), with :func:`over_seeds`; ``runs.recommender_results`` reads it back."""
    return {"seeds": [r["seed"] for r in results], "per_seed": results, "over_seeds": over_seeds(results)}


def over_seeds(results: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every overall test metric
    (``results``: one ``{"test": evaluate(...)}`` per seed)."""
    out = {}
    for section in ("full", "sampled"):
        if section in results[0]["test"]:
            values = {k: [r["test"][section][k] for r in results] for k in results[0]["test"][section]}
            out[section] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in values.items()}
    return out


def sampled(user_vectors, item_vectors, targets, negatives, spec: EvalSpec) -> dict[str, np.ndarray]:
    """Per-user metrics of each target ranked against its row of ``negatives``."""
    rank = lambda u, target, negative: sampled_ranks(u, item_vectors, target, negative)
    return _per_user(batched(rank, user_vectors, targets, negatives, batch_size=spec.batch_size), spec)
