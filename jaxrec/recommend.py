"""Recommendations out of a finished seqrec run (or an LLM-SRec run): the
next items for any history, from the state the run tested, scored exactly as
its evaluation scores them (the same user vectors against the same item
vectors).

    import jaxrec
    rec = jaxrec.Recommender.load("runs/quickstart/sasrec_llm2rec")   # several seeds: the best by validation
    rec.recommend(["Toy Story (1995)", "50"], k=10)                  # item ids or exact titles

    python -m jaxrec.recommend --run RUN --history 50,172,133 [-k 10] [--exclude-history]
    python -m jaxrec.recommend --run RUN --user 196
    python -m jaxrec.recommend --run RUN --all-users --to top10.jsonl
    python -m jaxrec.recommend --run RUN --new-items new.tsv --history 50,new-1

    rec.add_items([{"id": "new-1", "title": "A film nobody has rated yet (2026)"}])   # LLM-item runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import runs
from jaxrec.errors import ConfigError, DataError, RunError

ITEM_BLOCK = 1024
"""The item table is padded to a multiple of this many rows, so that adding items rarely changes a compiled shape."""
USER_BATCH = 256
"""Most histories scored per call."""
BATCH_BUCKETS = (1, 8, 32, USER_BATCH)
"""Call sizes: a call is padded to the smallest that holds it, so scoring compiles once per bucket
(a single request does not pay for 256 rows)."""


class ItemIdTaken(ValueError):
    """A new item's id is already in the catalogue."""


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
    tested = runs.recommender_results(run)
    loop = run.manifest["config"]["loop"]
    key, sign = f"best_validation_{loop['monitor']}", (1 if loop["monitor_mode"] == "max" else -1)
    scored = [(sign * r.training[key], r.seed) for r in tested.per_seed if r.training.get(key) is not None]
    seed = max(scored, key=lambda entry: entry[0])[1] if scored else tested.seeds[0]  # ties: the first
    return run_dir / f"seed-{seed}"


@dataclasses.dataclass
class _Scorer:
    """What differs between the runs a Recommender serves: how a batch of
    right-padded histories [B, max_history] becomes user vectors (given the
    item table on the device), the item vectors, and how added items' frozen
    rows become vectors (None: the run takes no new items)."""

    user_vectors: Callable[[np.ndarray, jax.Array, np.ndarray | None], jax.Array]
    """(histories, the item table on the device, the rows of their users in the data or None)."""
    item_vectors: np.ndarray
    max_history: int
    new_item_vectors: Callable[[np.ndarray], np.ndarray] | None = None
    no_new_items: str = ""
    """Why the run takes no new items."""
    needs_users: bool = False
    """Whether a history must come with its user (prompts that show each item's date)."""


def _seqrec_scorer(config, data, trained: runs.TrainedRecommender) -> _Scorer:
    from jaxrec.seqrec.recommender import Recommender as Module, backbone_class

    constants = trained.params.get("constants", {})
    llm = constants.get("llm_items")
    model = Module(config.recommender, data.num_items, 0 if llm is None else llm.shape[1],
                   0 if "align_items" not in constants else constants["align_items"].shape[1])
    variables = jax.tree.map(jnp.asarray, trained.params)
    spec = config.recommender
    users = jax.jit(lambda h, items: model.apply(variables, h, items, method=Module.user_vectors))
    return _Scorer(lambda h, items, _users: users(h, items), np.asarray(model.apply(variables, method=Module.items)),
                   spec.backbone.max_history - backbone_class(spec).readout_slots,
                   lambda rows: np.asarray(model.apply(variables, jnp.asarray(rows), method=Module.new_item_vectors)))


def _llmsrec_scorer(run: runs.RunInfo, config, data) -> _Scorer:
    """LLM-SRec's decoder as a recommender: f_user of each history's prompt against
    f_item of every item's prompt, as its evaluation ranks them."""
    from flax import traverse_util
    from safetensors.numpy import load_file

    from jaxrec.methods.llmsrec.teacher import Teacher
    from jaxrec.methods.llmsrec.task import distiller, every_item_vector, frozen_constants, prompts_for

    spec = config.distill
    lm = runs.load_trained_lm(run.path, config.model.dtype, role="--run", tokenizer=config.model.tokenizer,
                              matmul_dtype=config.model.matmul_dtype)  # as the run scored
    teacher = Teacher(spec.teacher, [str(i) for i in data.item_ids])
    prompts, days = prompts_for(lm, data, spec)
    model = distiller(lm.config, spec)
    heads = traverse_util.unflatten_dict(load_file(str(run.file("heads"))), sep="/")
    variables = jax.tree.map(jnp.asarray, {"params": {"llm": lm.params, "heads": heads},
                                           "constants": frozen_constants(teacher, prompts, data.num_items)})
    user_fn = jax.jit(model.user_vectors)
    items = every_item_vector(jax.jit(model.item_vectors), variables, data.num_items, config.evaluation.batch_size)

    def user_vectors(rows, _items, users):
        if days is None:
            return user_fn(variables, prompts.users(rows))
        if users is None:
            raise ValueError(f"{run.path}: its prompts show the day of each history item (distill.dates, the "
                             "authors' default): name the user whose history it is (user=..., --user), whose "
                             "data has the days, or train with distill.dates: false for any history")
        return user_fn(variables, prompts.users(rows, days(users, rows)))

    return _Scorer(user_vectors, items, spec.max_history, needs_users=days is not None,
                   no_new_items="LLM-SRec runs do not take new items (an item's vector comes from its prompt "
                                "through the teacher's item table, which has no row for it)")


class Recommender:
    """A trained sequential recommender (a seqrec run, or an LLM-SRec run) ready
    to rank the catalogue for any history."""

    def __init__(self, location: Path, config, data, scorer: _Scorer):
        self.location, self.config, self.data = location, config, data
        self.item_ids = [str(i) for i in data.item_ids]
        self.titles = list(data.titles)
        self.max_history = scorer.max_history
        self._index = {item: i for i, item in enumerate(self.item_ids) if i}
        self._by_title = {}
        for i, title in enumerate(self.titles):
            if i and title:
                self._by_title.setdefault(title, i)
        self._user_row = {str(u): row for row, u in enumerate(data.user_ids)}
        self._scorer = scorer
        self._vectors = np.asarray(scorer.item_vectors, np.float32)
        self._items = _padded(self._vectors)
        self._scores = jax.jit(lambda users, items: users @ items.T)

        def best(users, items, catalogue, candidates):
            column = jnp.arange(items.shape[0])
            scores = jnp.where((column > 0) & (column < catalogue), users @ items.T, -jnp.inf)
            return jax.lax.top_k(scores, candidates)

        # the best candidates of each row, chosen where the scores are: only [rows, candidates] comes back
        self._best_on_device = jax.jit(best, static_argnums=3)
        self._new_item_encoder = None

    @classmethod
    def load(cls, run_dir: str | Path) -> "Recommender":
        """A finished seqrec run (or one of its seed-<n> directories; of a run
        with several seeds, the seed with the best validation result), or a
        finished llmsrec run."""
        from jaxrec.methods.llmsrec.task import LlmsrecConfig
        from jaxrec.tasks.seqrec import SeqrecConfig

        run_dir = Path(run_dir)
        try:
            run = runs.open_run(run_dir, "--run")
        except RunError as err:
            raise RunError(f"{err}; --run takes the directory of a finished seqrec or llmsrec run") from None
        if run.task not in ("seqrec", "llmsrec"):
            raise RunError(f"{run_dir} is a {run.task} run; recommendations come from a finished seqrec or "
                           "llmsrec run")
        config = run.config(SeqrecConfig if run.task == "seqrec" else LlmsrecConfig)
        data = config.data.load(config.seed, log=lambda *_: None)
        if run.task == "llmsrec":
            return cls(run_dir, config, data, _llmsrec_scorer(run, config, data))
        location = _best_seed_directory(run_dir, run)
        trained = runs.trained_recommender(location, "--run")
        if [str(i) for i in data.item_ids[1:]] != trained.item_ids:
            raise DataError(f"{location}: the run's items differ from those of its dataset {config.data.name} now; "
                            "was the data changed since it trained?")
        return cls(location, config, data, _seqrec_scorer(config, data, trained))

    def prepare_new_items(self) -> None:
        """Load the encoder that embeds new items (the run's LM along its chain) and
        compile it, so that the first :meth:`add_items` does not wait for either."""
        from jaxrec.data.item_tables import ItemTable
        from jaxrec.new_items import NewItemEncoder

        if self._scorer.new_item_vectors is None:
            raise RunError(self._scorer.no_new_items)
        if self._new_item_encoder is None:
            self._new_item_encoder = NewItemEncoder.of_run(self.config, [str(i) for i in self.data.item_ids])
            self._new_item_encoder(ItemTable(self.item_ids[1:2], self.titles[1:2], [{}], "warm-up"))

    def add_items(self, items) -> list[str]:
        """Add items nobody has interacted with (an ItemTable, or mappings with
        ``id``, ``title`` and optional ``attributes``) and rank them with the
        catalogue from now on: embedded as the catalogue was (see
        :mod:`jaxrec.new_items`), through the trained adapter. Returns their ids.
        Refused for runs whose items are only ID embeddings."""
        from jaxrec.new_items import item_table

        table = item_table(items)
        known = [i for i in table.ids if i in self._index]
        if known:
            raise ItemIdTaken(f"item id(s) {known[:5]} are already in the catalogue; new items need new ids")
        self.prepare_new_items()
        rows = self._new_item_encoder(table)
        vectors = self._scorer.new_item_vectors(rows)
        self._vectors = np.concatenate([self._vectors, vectors.astype(np.float32)])
        self._items = _padded(self._vectors)
        for item_id, title in zip(table.ids, table.titles):
            self._index[item_id] = len(self.item_ids)
            self._by_title.setdefault(title, len(self.item_ids))
            self.item_ids.append(item_id)
            self.titles.append(title)
        return list(table.ids)

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
        user = str(self.data.user_ids[0])
        history = self.user_history(user)[-1:]  # an item of that user's, for runs whose prompts show dates
        for size in BATCH_BUCKETS:
            for k in (1, min(40, len(self.item_ids) - 1)):  # 16 and 64 candidates: up to ~50 items excluded
                self.recommend_batch([history] * size, k=k, users=[user] * size if self.needs_users else None)

    @property
    def needs_users(self) -> bool:
        """Whether each history must name its user (see :meth:`scores`)."""
        return self._scorer.needs_users

    def knows_user(self, user: str) -> bool:
        return str(user) in self._user_row

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

    def _user_rows(self, users: Sequence[str] | None, count: int) -> np.ndarray | None:
        if users is None:
            return None
        if len(users) != count:
            raise ValueError(f"{len(users)} users for {count} histories; give one user per history")
        unknown = [u for u in users if str(u) not in self._user_row]
        if unknown:
            raise KeyError(f"unknown user {unknown[0]!r} in {self.config.data.name}")
        return np.asarray([self._user_row[str(u)] for u in users], np.int64)

    def _user_vectors(self, histories, users) -> Iterator[tuple[int, int, jax.Array]]:
        """(start, rows, user vectors of one call) over the histories, in calls padded to a
        bucket size (filler rows repeat the call's first row, a history its scorer can read)."""
        rows, user_rows = self._histories(histories), self._user_rows(users, len(histories))
        for start in range(0, len(rows), USER_BATCH):
            chunk = rows[start : start + USER_BATCH]
            size = next(b for b in BATCH_BUCKETS if b >= len(chunk))
            fill = np.zeros(size - len(chunk), np.int64)
            padded = np.concatenate([chunk, chunk[fill]])
            who = None if user_rows is None else np.concatenate([user_rows[start : start + len(chunk)], user_rows[start + fill]])
            yield start, len(chunk), self._scorer.user_vectors(padded, self._items, who)

    def scores(self, histories: Sequence[Sequence[str | int]], users: Sequence[str] | None = None) -> np.ndarray:
        """[len(histories), catalogue + 1] scores (column 0, padding, is -inf; added items after
        the catalogue). ``users``: whose histories these are, for runs whose prompts show each
        item's date (LLM-SRec's default), which then come from that user's data."""
        out = [np.asarray(self._scores(vectors, self._items))[:count, : len(self.item_ids)]
               for _, count, vectors in self._user_vectors(histories, users)]
        scores = np.concatenate(out)
        scores[:, 0] = -np.inf
        return scores

    def recommend_batch(self, histories: Sequence[Sequence[str | int]], k: int = 10, exclude_history: bool = False,
                        exclude: Iterable[str | int] = (), users: Sequence[str] | None = None
                        ) -> list[list[Recommendation]]:
        """The top ``k`` items for each history, best first (equal scores by item row);
        ``exclude_history`` leaves out the history's own items, ``exclude`` these items for every
        history; ``users`` as in :meth:`scores`."""
        exclude = [*exclude]
        return self.top_items(histories, [k] * len(histories),
                              [[*exclude, *(history if exclude_history else ())] for history in histories], users)

    def top_items(self, histories: Sequence[Sequence[str | int]], ks: Sequence[int],
                  excluded: Sequence[Sequence[str | int]], users: Sequence[str] | None = None
                  ) -> list[list[Recommendation]]:
        """Each history's top ``ks[i]`` items without ``excluded[i]``. The scores never leave
        the device: it returns each row's best candidates, enough to cover the exclusions
        (a power of two, so few shapes compile), and the host drops the excluded ones."""
        for k in ks:
            self._check_k(k)
        excluded = [{self.item_index(item) for item in items} for items in excluded]
        need = max(k + len(e) for k, e in zip(ks, excluded))
        candidates = min(1 << max(need - 1, 15).bit_length(), self._items.shape[0])
        catalogue = jnp.asarray(len(self.item_ids), jnp.int32)
        best = []
        for start, count, vectors in self._user_vectors(histories, users):
            values, indices = map(np.asarray, self._best_on_device(vectors, self._items, catalogue, candidates))
            for row in range(count):
                k, skip = ks[start + row], excluded[start + row]
                order = np.lexsort((indices[row], -values[row]))  # best first, equal scores by item row
                chosen = [(i, v) for i, v in zip(indices[row][order], values[row][order])
                          if i not in skip and math.isfinite(v)][:k]
                best.append([Recommendation(self.item_ids[i], self.titles[i], float(v)) for i, v in chosen])
        return best

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= len(self.item_ids) - 1:
            raise ValueError(f"k must be in 1..{len(self.item_ids) - 1} (the catalogue), got {k}")

    def recommend(self, history: Sequence[str | int], k: int = 10, exclude_history: bool = False,
                  exclude: Iterable[str | int] = (), user: str | None = None) -> list[Recommendation]:
        return self.recommend_batch([history], k, exclude_history, exclude, None if user is None else [user])[0]

    def user_history(self, user_id: str) -> list[str]:
        """A user's whole item sequence in the run's data (training, validation and test items)."""
        if str(user_id) not in self._user_row:
            raise KeyError(f"unknown user {user_id!r} in {self.config.data.name}")
        return [self.item_ids[i] for i in self.data.sequence(self._user_row[str(user_id)])]


def _padded(vectors: np.ndarray) -> jax.Array:
    """The item table with zero rows up to the next multiple of ITEM_BLOCK (their scores are cut off)."""
    rows = -(-len(vectors) // ITEM_BLOCK) * ITEM_BLOCK
    return jnp.asarray(np.concatenate([vectors, np.zeros((rows - len(vectors), vectors.shape[1]), vectors.dtype)]))


def _table(recommendations: list[Recommendation]) -> str:
    width = max([len(r.item_id) for r in recommendations] + [4])
    lines = [f"{'rank':>4}  {'item':<{width}}  {'score':>9}  title"]
    for rank, r in enumerate(recommendations, start=1):
        lines.append(f"{rank:>4}  {r.item_id:<{width}}  {r.score:>9.4f}  {r.title}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrec.recommend",
        description="The next items for a history, from a finished seqrec or llmsrec run (the state it tested).",
        epilog="examples:\n"
               "  python -m jaxrec.recommend --run runs/quickstart/sasrec_llm2rec --history 50,172,133\n"
               "  python -m jaxrec.recommend --run runs/quickstart/sasrec_id --user 196 --exclude-history\n"
               "  python -m jaxrec.recommend --run runs/quickstart/sasrec_id --all-users --to top10.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished seqrec or llmsrec run directory (several seeds: the best by "
                                                     "validation, or name one seed-<n> directory)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", help="comma-separated item ids or exact titles, oldest first")
    source.add_argument("--user", help="a user id of the run's dataset: their whole sequence is the history")
    source.add_argument("--all-users", action="store_true", help="every user of the dataset (write them with --to)")
    parser.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    parser.add_argument("--exclude-history", action="store_true", help="leave out the items already in the history")
    parser.add_argument("--to", help="with --all-users: a JSON-lines file, one user and their top k a line")
    parser.add_argument("--new-items", type=Path, metavar="FILE",
                        help="items nobody has interacted with yet (items.tsv: item_id<TAB>title, or a RecBole .item "
                             "file with attributes), embedded by the run's encoder and ranked with the catalogue "
                             "(runs with LLM item vectors)")
    args = parser.parse_args(argv)
    if args.all_users and not args.to:
        parser.error("--all-users writes a file: give --to FILE")
    try:
        rec = Recommender.load(args.run)
        if args.new_items is not None:
            from jaxrec.data.item_tables import read_items

            added = rec.add_items(read_items(args.new_items))
            print(f"added {len(added)} new item(s) from {args.new_items}", file=sys.stderr)
        if args.all_users:
            return _write_all_users(rec, Path(args.to), args.k, args.exclude_history)
        if args.user is not None:
            top = rec.recommend(rec.user_history(args.user), args.k, args.exclude_history, user=args.user)
        else:
            top = rec.recommend([h.strip() for h in args.history.split(",")], args.k, args.exclude_history)
        print(_table(top))
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
        top = rec.recommend_batch([rec.user_history(u) for u in chunk], k, exclude_history, users=list(chunk))
        lines += [json.dumps({"user": u, "items": [dataclasses.asdict(r) for r in recs]}) for u, recs in zip(chunk, top)]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    print(f"{len(users)} users' top {k} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
