"""The frozen SASRec teacher of LLM-SRec, read from a finished ``seqrec`` run:
its best state (or its last, if it never validated), its item table, and user
vectors for any histories."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.config import ConfigError
from jaxrec.data.items import DataError
from jaxrec.seqrec.evaluate import batched
from jaxrec.seqrec.recommender import Recommender
from jaxrec.seqrec.spec import RecommenderSpec
from jaxrec.train.checkpoint import Checkpointer


class Teacher:
    def __init__(self, run_dir: str | Path, item_ids: list[str]):
        run = Path(run_dir)
        # the best validation state, or the last one of a run without validation
        found = [d for d in (run / "best", run / "checkpoints") if d.is_dir()]
        saved = Checkpointer(found[0], keep=1) if found else None
        if saved is None or saved.latest_step() is None or not (run / "item_ids.json").exists():
            raise DataError(f"{run} holds no finished seqrec run; distill.teacher must be the directory of one "
                            "(with several seeds: one of its seed-<n> directories)")
        trainable, extra = saved.read()
        saved.close()
        identity = extra["identity"]
        if identity.get("task") != "seqrec":
            raise ConfigError(f"{run} is a {identity.get('task')!r} run; the teacher must come from a seqrec run")
        spec = RecommenderSpec(**identity["recommender"])
        if spec.items != "id" or spec.model != "sasrec":
            raise ConfigError(f"{run}: the teacher is a {spec.model} on {spec.items!r} items; "
                              "LLM-SRec distils an ID-based SASRec (recommender.model sasrec, items id)")
        saved_ids = json.loads((run / "item_ids.json").read_text())
        if saved_ids != item_ids[1:]:
            raise DataError(f"{run} was trained on other items than this dataset's "
                            f"({len(saved_ids)} vs {len(item_ids) - 1}); train the teacher on the same data")
        self.spec, self.source = spec, str(run)
        self.model = Recommender(spec, len(item_ids) - 1)
        self.variables = {"params": jax.tree.map(jnp.asarray, trainable["model"]["params"])}
        self._items = jax.jit(lambda v: self.model.apply(v, method=Recommender.items))
        self._users = jax.jit(lambda v, h, items: self.model.apply(v, h, items, method=Recommender.user_vectors))

    @property
    def dim(self) -> int:
        return self.spec.hidden

    def item_table(self) -> np.ndarray:
        """[num_items + 1, dim] (row 0: padding)."""
        return np.asarray(self._items(self.variables))

    def user_vectors(self, history: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The SASRec output at each right-padded history's last item (its latest
        ``max_history`` items are read)."""
        history = _latest(history, self.spec.max_history)
        items = self._items(self.variables)
        return batched(lambda h: self._users(self.variables, h, items), history, batch_size=batch_size)


def _latest(history: np.ndarray, length: int) -> np.ndarray:
    """Each right-padded row's last ``length`` real items, right-padded to ``length``."""
    if history.shape[1] <= length:
        return history
    counts = np.sum(history > 0, axis=1)
    start = np.maximum(counts - length, 0)
    index = start[:, None] + np.arange(length)[None]
    taken = np.take_along_axis(history, np.minimum(index, history.shape[1] - 1), axis=1)
    return np.where(index < counts[:, None], taken, 0).astype(history.dtype)
