"""Recommendations out of a finished seqrec run: the next items for any
history, from the state the run tested, scored exactly as its evaluation
scores them (the same user vectors against the same item vectors).

    import jaxrec
    rec = jaxrec.Recommender.load("runs/quickstart/sasrec_llm2rec")   # several seeds: the best by validation
    rec.recommend(["Toy Story (1995)", "50"], k=10)                  # item ids or exact titles

    python -m jaxrec.recommend --run RUN --history 50,172,133 [-k 10] [--exclude-history]
    python -m jaxrec.recommend --run RUN --user 196
    python -m jaxrec.recommend --run RUN --all-users --to top10.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import runs
from jaxrec.errors import ConfigError, DataError, RunError

USER_BATCH = 256
"""Most histories scored per call."""
BATCH_BUCKETS = (1, 8, 32, USER_BATCH)
"""Call sizes: a call is padded to the smallest that holds it, so scoring compiles once per bucket
(a single request does not pay for 256 rows)."""


@dataclasses.dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float


def _best_seed_directory(run_dir: Path, run: runs.RunInfo) -> Path:
    """``run_dir`` itself, or for a run with several seeds the seed directory
    with the best validation value of the run's monitor."""
    if run.prefix or "recommender" in run.manifest["outputs"]:
        return run_dir
    summary = json.loads(run.file("summary").read_text())
    loop = run.manifest["config"]["loop"]
    key, sign = f"best_validation_{loop['monitor']}", (1 if loop["monitor_mode"] == "max" else -1)
    scored = [(sign * r["training"][key], r["seed"]) for r in summary["per_seed"] if r["training"].get(key) is not None]
    seed = max(scored, key=lambda entry: entry[0])[1] if scored else summary["per_seed"][0]["seed"]  # ties: the first
    return run_dir / f"seed-{seed}"


class Recommender:
    """A trained sequential recommender ready to rank the catalogue for any history."""

    def __init__(self, location: Path, config, data, model, variables: dict, item_vectors: np.ndarray):
        from jaxrec.seqrec.recommender import Recommender as Module

        self.location, self.config, self.data = location, config, data
        self.item_ids = [str(i) for i in data.item_ids]
        self.titles = list(data.titles)
        self.max_history = config.recommender.max_history - (1 if config.recommender.model == "bert4rec" else 0)
        self._index = {item: i for i, item in enumerate(self.item_ids) if i}
        self._by_title = {}
        for i, title in enumerate(self.titles):
            if i and title:
                self._by_title.setdefault(title, i)
        self._user_row = {str(u): row for row, u in enumerate(data.user_ids)}
        self._items = jnp.asarray(item_vectors)
        self._scores = jax.jit(
            lambda v, h, items: model.apply(v, h, items, method=Module.user_vectors) @ items.T)
        self._variables = variables

    @classmethod
    def load(cls, run_dir: str | Path) -> "Recommender":
        """A finished seqrec run (or one of its seed-<n> directories); of a run
        with several seeds, the seed with the best validation result."""
        from jaxrec.config import build
        from jaxrec.seqrec.recommender import Recommender as Module
        from jaxrec.tasks.seqrec import SeqrecConfig

        run_dir = Path(run_dir)
        try:
            run = runs.open_run(run_dir, "--run")
        except RunError as err:
            raise RunError(f"{err}; --run takes the directory of a finished seqrec run") from None
        if run.task != "seqrec":
            raise RunError(f"{run_dir} is a {run.task} run; recommendations come from a finished seqrec run")
        location = _best_seed_directory(run_dir, run)
        trained = runs.trained_recommender(location, "--run")
        config = build(SeqrecConfig, {k: v for k, v in run.manifest["config"].items() if k != "run_dir"})
        data = config.data.load(config.seed, log=lambda *_: None)
        if [str(i) for i in data.item_ids[1:]] != trained.item_ids:
            raise DataError(f"{location}: the run's items differ from those of its dataset {config.data.name} now; "
                            "was the data changed since it trained?")
        constants = trained.params.get("constants", {})
        llm = constants.get("llm_items")
        model = Module(config.recommender, data.num_items, 0 if llm is None else llm.shape[1],
                       0 if "align_items" not in constants else constants["align_items"].shape[1])
        variables = jax.tree.map(jnp.asarray, trained.params)
        items = np.asarray(model.apply(variables, method=Module.items))
        return cls(location, config, data, model, variables, items)

    def item_index(self, item: str | int) -> int:
        """The catalogue row of an item given by its id (as in the dataset) or its exact title."""
        key = str(item)
        if key in self._index:
            return self._index[key]
        if key in self._by_title:
            return self._by_title[key]
        raise KeyError(f"unknown item {item!r}: neither an item id nor an exact title of {self.config.data.name}")

    def warm_up(self) -> None:
        """Compile every call size now rather than at the first requests of each size."""
        for size in BATCH_BUCKETS:
            self.scores([[self.item_ids[1]]] * size)

    def knows(self, item: str | int) -> bool:
        return str(item) in self._index or str(item) in self._by_title

    def _histories(self, histories: Sequence[Sequence[str | int]]) -> np.ndarray:
        rows = np.zeros((len(histories), self.max_history), np.int32)
        for r, history in enumerate(histories):
            if not len(history):
                raise ValueError(f"history {r} is empty; give at least one item")
            ids = [self.item_index(item) for item in history][-self.max_history:]
            rows[r, : len(ids)] = ids
        return rows

    def scores(self, histories: Sequence[Sequence[str | int]]) -> np.ndarray:
        """[len(histories), num_items + 1] scores (column 0, padding, is -inf)."""
        rows = self._histories(histories)
        out = []
        for start in range(0, len(rows), USER_BATCH):
            chunk = rows[start : start + USER_BATCH]
            size = next(b for b in BATCH_BUCKETS if b >= len(chunk))
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), chunk.shape[1]), np.int32)])
            padded[len(chunk):, 0] = 1  # filler rows: any real item
            out.append(np.asarray(self._scores(self._variables, padded, self._items))[: len(chunk)])
        scores = np.concatenate(out)
        scores[:, 0] = -np.inf
        return scores

    def recommend_batch(self, histories: Sequence[Sequence[str | int]], k: int = 10, exclude_history: bool = False,
                        exclude: Iterable[str | int] = ()) -> list[list[Recommendation]]:
        """The top ``k`` items for each history, best first; ``exclude_history``
        leaves out the history's own items, ``exclude`` these items for every history."""
        if not 1 <= k <= len(self.item_ids) - 1:
            raise ValueError(f"k must be in 1..{len(self.item_ids) - 1} (the catalogue), got {k}")
        exclude = list(exclude)
        return [self.top_k(row, k, [*exclude, *(history if exclude_history else ())])
                for row, history in zip(self.scores(histories), histories)]

    def top_k(self, scores: np.ndarray, k: int, exclude: Iterable[str | int] = ()) -> list[Recommendation]:
        """The ``k`` best items of one row of ``scores``, leaving out ``exclude``."""
        scores = scores.copy()
        scores[[self.item_index(item) for item in exclude]] = -np.inf
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]  # best first; equal scores by item row
        return [Recommendation(self.item_ids[i], self.titles[i], float(scores[i])) for i in top if math.isfinite(scores[i])]

    def recommend(self, history: Sequence[str | int], k: int = 10, exclude_history: bool = False,
                  exclude: Iterable[str | int] = ()) -> list[Recommendation]:
        return self.recommend_batch([history], k, exclude_history, exclude)[0]

    def user_history(self, user_id: str) -> list[str]:
        """A user's whole item sequence in the run's data (training, validation and test items)."""
        if str(user_id) not in self._user_row:
            raise KeyError(f"unknown user {user_id!r} in {self.config.data.name}")
        return [self.item_ids[i] for i in self.data.sequence(self._user_row[str(user_id)])]


def _table(recommendations: list[Recommendation]) -> str:
    width = max([len(r.item_id) for r in recommendations] + [4])
    lines = [f"{'rank':>4}  {'item':<{width}}  {'score':>9}  title"]
    for rank, r in enumerate(recommendations, start=1):
        lines.append(f"{rank:>4}  {r.item_id:<{width}}  {r.score:>9.4f}  {r.title}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrec.recommend",
        description="The next items for a history, from a finished seqrec run (the state it tested).",
        epilog="examples:\n"
               "  python -m jaxrec.recommend --run runs/quickstart/sasrec_llm2rec --history 50,172,133\n"
               "  python -m jaxrec.recommend --run runs/quickstart/sasrec_id --user 196 --exclude-history\n"
               "  python -m jaxrec.recommend --run runs/quickstart/sasrec_id --all-users --to top10.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished seqrec run directory (several seeds: the best by "
                                                     "validation, or name one seed-<n> directory)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", help="comma-separated item ids or exact titles, oldest first")
    source.add_argument("--user", help="a user id of the run's dataset: their whole sequence is the history")
    source.add_argument("--all-users", action="store_true", help="every user of the dataset (write them with --to)")
    parser.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--exclude-history", action="store_true", help="leave out the items already in the history")
    parser.add_argument("--to", help="with --all-users: a JSON-lines file, one user and their top k a line")
    args = parser.parse_args(argv)
    if args.all_users and not args.to:
        parser.error("--all-users writes a file: give --to FILE")
    try:
        rec = Recommender.load(args.run)
        if args.all_users:
            return _write_all_users(rec, Path(args.to), args.k, args.exclude_history)
        history = rec.user_history(args.user) if args.user is not None else [h.strip() for h in args.history.split(",")]
        print(_table(rec.recommend(history, args.k, args.exclude_history)))
    except (ConfigError, DataError, RunError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    return 0


def _write_all_users(rec: Recommender, path: Path, k: int, exclude_history: bool) -> int:
    from jaxrec.io import write_bytes_atomic

    users = rec.data.user_ids.astype(str)
    lines = []
    for start in range(0, len(users), USER_BATCH):
        chunk = users[start : start + USER_BATCH]
        top = rec.recommend_batch([rec.user_history(u) for u in chunk], k, exclude_history)
        lines += [json.dumps({"user": u, "items": [dataclasses.asdict(r) for r in recs]}) for u, recs in zip(chunk, top)]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    print(f"{len(users)} users' top {k} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
