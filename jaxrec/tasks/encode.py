"""Task ``encode``: embed every item of a dataset with an LM (a base model, or
the trained LM of a run through ``model.init_from``), from its title or from
LLMEmb's attribute prompt.

Outputs: ``item_embeddings`` (float32 [items, hidden]; row i is the item
``item_ids[i]``), ``item_ids`` and ``summary``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

from jaxrec.data.item_tables import ItemTable, read_items
from jaxrec.data.item_text import attribute_text, item_attributes
from jaxrec.errors import DataError
from jaxrec.runs import Run
from jaxrec.tasks.specs import DataSpec, ModelSpec, Task, TaskConfig, require_positive


@dataclasses.dataclass
class EncodeSpec:
    text: Literal["title", "attributes"] = "title"
    """What is embedded: the plain title (LLM2Rec), or the attribute prompt with every
    attribute, the title first (LLMEmb: "The <domain> item has the following attributes: ...")."""
    domain: str = "item"
    """The <domain> of the attribute prompt."""
    pooling: Literal["mean", "last"] = "mean"
    mask: Literal["bidirectional", "causal"] = "bidirectional"
    batch_size: int = 64
    """Titles per call when not packed."""
    max_length: int = 128
    packed: bool = True
    """Pack several titles into each row (attention stays within a title): compute follows the real tokens."""
    tokens_per_batch: int = 512
    """Tokens per call when packed."""
    items: Literal["all", "dataset"] = "all"
    """all: every item of the item file (the embeddings serve any filtering of the data); dataset: only the items
    left after the data section's filtering and sampling (fewer to embed when data.sample_items is set)."""

    def __post_init__(self):
        require_positive(self, "batch_size", "max_length", "tokens_per_batch")
        if self.items not in ("all", "dataset"):
            raise ValueError(f"items must be 'all' or 'dataset', got {self.items!r}")


@dataclasses.dataclass
class EncodeConfig(TaskConfig):
    task: str = "encode"
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataSpec = dataclasses.field(default_factory=DataSpec)
    encode: EncodeSpec = dataclasses.field(default_factory=EncodeSpec)


def item_texts(items: ItemTable, spec: EncodeSpec) -> list[str]:
    """What is embedded for each item: its title, or its attribute prompt."""
    if spec.text == "attributes":
        return [attribute_text(a, spec.domain) for a in item_attributes(items.titles, items.attributes)]
    return list(items.titles)


def encode_texts(lm, texts: list[str], spec: EncodeSpec, progress: bool | None = None):
    """The item vectors of ``texts``, pooled as ``spec`` says."""
    return lm.encode(texts, pooling=spec.pooling, mask=spec.mask, batch_size=spec.batch_size,
                     max_length=spec.max_length, packed=spec.packed, tokens_per_batch=spec.tokens_per_batch,
                     progress=progress)


def _items(config: EncodeConfig, log) -> ItemTable:
    if config.encode.items == "all":
        return read_items(config.data.name)
    data = config.data.load(config.seed, log)
    return ItemTable([str(i) for i in data.item_ids[1:]], data.titles[1:], data.attributes[1:],
                     f"{config.data.name} (the {data.num_items} items left after filtering)")


def _without_untitled(items: ItemTable, log) -> ItemTable:
    """The items that have a title. Data preparation drops the interactions of
    the others, so no recommender ever asks for their vectors."""
    keep = [i for i, title in enumerate(items.titles) if title]
    if len(keep) == len(items):
        return items
    if not keep:
        raise DataError(f"{items.source}: no item has a title")
    untitled = [items.ids[i] for i in range(len(items)) if not items.titles[i]]
    log(f"warning: {len(untitled)} item(s) of {items.source} have no title and are not encoded (e.g. ids "
        f"{untitled[:5]}); data preparation drops their interactions too")
    pick = lambda values: [values[i] for i in keep]
    return ItemTable(pick(items.ids), pick(items.titles), pick(items.attributes), items.source)


def run(config: EncodeConfig, run: Run, log=print) -> dict:
    items = _without_untitled(_items(config, log), log)
    log(f"data: {len(items)} items from {items.source}")

    start = time.perf_counter()
    lm = config.model.load()
    run.set_model(lm)
    load_seconds = time.perf_counter() - start
    log(f"model: {lm} (loaded in {load_seconds:.1f} s)")

    spec = config.encode
    texts = item_texts(items, spec)
    log(f"encoding {len(items)} {'titles' if spec.text == 'title' else 'attribute prompts'} ({spec.mask}, "
        f"{spec.pooling} pooling, " + ("packed rows)" if spec.packed else f"batches of {spec.batch_size})"))
    start = time.perf_counter()
    embeddings = encode_texts(lm, texts, spec)
    encode_seconds = time.perf_counter() - start

    run.save_npy("item_embeddings", "item_embeddings.npy", embeddings, pooling=spec.pooling, mask=spec.mask)
    run.save_json("item_ids", "item_ids.json", items.ids)
    summary = {
        "task": "encode",
        "items": len(items),
        "dim": int(embeddings.shape[1]),
        "model": lm.source,
        "init_from": config.model.init_from,
        "data": items.source,
        "load_seconds": round(load_seconds, 2),
        "encode_seconds": round(encode_seconds, 2),
    }
    log(f"encoded {len(items)} items in {encode_seconds:.1f} s -> {run.path / 'item_embeddings.npy'}")
    return summary


TASK = Task("encode", EncodeConfig, run, "embed every item (title or attribute prompt) with an LM (a base model, or a run's trained LM "
            "through model.init_from); outputs item_embeddings.npy and item_ids.json", export="item_embeddings")
