"""Items a trained recommender never saw, embedded exactly as its catalogue
was: the text the encode run embedded (title or attribute prompt), its LM
along the whole ``init_from`` chain, its mask and pooling, then the
conditioning (and PCA) the recommender fitted on its catalogue's rows.
The trained adapter then maps those rows to item vectors (see
:meth:`jaxrec.Recommender.add_items`)."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import numpy as np

from jaxrec import runs
from jaxrec.data.item_tables import ItemTable
from jaxrec.errors import DataError, RunError
from jaxrec.seqrec.item_vectors import RowTransform


@dataclasses.dataclass
class NewItemEncoder:
    lm: object
    encode: object
    """The encode run's EncodeSpec."""
    transform: RowTransform
    source: str

    @classmethod
    def of_run(cls, config, item_ids: list[str]) -> "NewItemEncoder":
        """The encoder behind a seqrec run's frozen item matrix (``config``: the run's
        SeqrecConfig; ``item_ids``: its catalogue, row 0 padding)."""
        from jaxrec.tasks.encode import EncodeConfig
        from jaxrec.seqrec.recommender import backbone_class
        from jaxrec.tasks.seqrec import frozen_item_rows

        spec = config.recommender
        if not spec.items.uses_llm:
            raise RunError("this run's items are ID embeddings, which exist only for items it trained on; "
                           "new items need a run with recommender.items.kind: llm or id+llm")
        if backbone_class(spec).masks_items:
            raise RunError(f"{spec.backbone.model} runs do not take new items (the mask token's row follows the catalogue)")
        location = spec.items.embeddings
        if not runs.is_run(location):
            raise RunError(f"recommender.items.embeddings is {location}, a matrix made outside jaxrec: there is no "
                           "encoder to embed new items with; use a run whose embeddings come from an encode run")
        encode_run = runs.open_run(location, "recommender.items.embeddings")
        encode_config = encode_run.config(EncodeConfig)
        _, transform = frozen_item_rows(spec.items, item_ids)
        lm = encode_config.model.load()
        return cls(lm, encode_config.encode, transform, str(location))

    def __call__(self, items: ItemTable) -> np.ndarray:
        """The frozen-matrix rows of ``items`` [len(items), dim]."""
        from jaxrec.tasks.encode import encode_texts, item_texts

        return self.transform(encode_texts(self.lm, item_texts(items, self.encode), self.encode, progress=False))


def item_table(items: Iterable[Mapping] | ItemTable, source: str = "new items") -> ItemTable:
    """New items as an ItemTable: given as one, or as mappings with ``id``, ``title``
    and optional ``attributes`` (for runs whose encoder embeds attribute prompts)."""
    if isinstance(items, ItemTable):
        return items
    ids, titles, attributes = [], [], []
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or not str(item.get("id", "")).strip() or not str(item.get("title", "")).strip():
            raise DataError(f"new item {position}: give an 'id' and a non-empty 'title', got {item!r}")
        extra = item.get("attributes") or {}
        if not isinstance(extra, Mapping):
            raise DataError(f"new item {position}: 'attributes' must map names to values, got {extra!r}")
        ids.append(str(item["id"]).strip())
        titles.append(str(item["title"]).strip())
        attributes.append(dict(extra))
    if not ids:
        raise DataError("no new items given")
    if len(set(ids)) != len(ids):
        raise DataError("new items: an id appears more than once")
    return ItemTable(ids, titles, attributes, source)
