"""The frozen SASRec teacher of LLM-SRec, read from a finished ``seqrec`` run
through the run reader (the state it was tested with: its best validation
state, or its last if it never validated), its item table, and user vectors
for any histories."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import runs
from jaxrec.errors import ConfigError, DataError, RunError
from jaxrec.seqrec.evaluate import batched
from jaxrec.seqrec.recommender import Recommender


class Teacher:
    def __init__(self, run_dir: str | Path, item_ids: list[str]):
        try:
            trained = runs.trained_recommender(run_dir, role="distill.teacher")
        except RunError as err:
            raise DataError(f"{run_dir} holds no finished seqrec run; distill.teacher must be the directory of one "
                            f"(with several seeds: one of its seed-<n> directories). {err}") from None
        spec = trained.spec
        if spec.items.uses_llm or spec.backbone.model != "sasrec":
            raise ConfigError(f"{run_dir}: the teacher is a {spec.backbone.model} on {spec.items.kind!r} items; "
                              "LLM-SRec distils an ID-based SASRec (recommender.backbone.model sasrec, "
                              "recommender.items.kind id)")
        if trained.item_ids != item_ids[1:]:
            raise DataError(f"{run_dir} was trained on other items than this dataset's "
                            f"({len(trained.item_ids)} vs {len(item_ids) - 1}); train the teacher on the same data")
        self.spec, self.source = spec, trained.source
        self.model = Recommender(spec, len(item_ids) - 1)
        self.variables = {"params": jax.tree.map(jnp.asarray, trained.params["params"])}
        self._items = jax.jit(lambda v: self.model.apply(v, method=Recommender.items))
        self._users = jax.jit(lambda v, h, items: self.model.apply(v, h, items, method=Recommender.user_vectors))

    @property
    def dim(self) -> int:
        return self.spec.backbone.hidden

    def item_table(self) -> np.ndarray:
        """[num_items + 1, dim] (row 0: padding)."""
        return np.asarray(self._items(self.variables))

    def user_vectors(self, history: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """The SASRec output at each right-padded history's last item (its latest
        ``max_history`` items are read)."""
        history = _latest(history, self.spec.backbone.max_history)
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
