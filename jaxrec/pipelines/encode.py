"""Task ``encode``: embed every item title of a dataset with an LM.

Writes ``item_embeddings.npy`` (float32 [items, hidden]; row i is the item
``item_ids.json[i]``) and ``summary.json`` into the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path

from jaxrec.config import RunConfig
from jaxrec.data.items import DataError, read_items
from jaxrec.io import save_npy_atomic, write_json_atomic
from jaxrec.models.lm import load_lm


def run(config: RunConfig, run_dir: Path, log=print) -> dict:
    items = read_items(config.data.name)
    untitled = [item_id for item_id, title in zip(items.ids, items.titles) if not title]
    if untitled:
        raise DataError(f"{items.source}: {len(untitled)} item(s) have no title, e.g. ids {untitled[:5]}")
    log(f"data: {len(items)} items from {items.source}")

    start = time.perf_counter()
    lm = load_lm(config.model.name, config.model.dtype, tokenizer=config.model.tokenizer)
    load_seconds = time.perf_counter() - start
    log(f"model: {lm} (loaded in {load_seconds:.1f} s)")

    spec = config.encode
    start = time.perf_counter()
    embeddings = lm.encode(
        items.titles, pooling=spec.pooling, mask=spec.mask, batch_size=spec.batch_size, max_length=spec.max_length
    )
    encode_seconds = time.perf_counter() - start

    save_npy_atomic(run_dir / "item_embeddings.npy", embeddings)
    write_json_atomic(run_dir / "item_ids.json", items.ids)
    summary = {
        "task": "encode",
        "items": len(items),
        "dim": int(embeddings.shape[1]),
        "model": lm.source,
        "data": items.source,
        "load_seconds": round(load_seconds, 2),
        "encode_seconds": round(encode_seconds, 2),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    log(f"encoded {len(items)} titles in {encode_seconds:.1f} s -> {run_dir / 'item_embeddings.npy'}")
    return summary
