"""Benchmark: load + preprocess + split a dataset cold (no cache) and cached."""

from __future__ import annotations

import tempfile
import time

from jaxrec import assets
from jaxrec.data.prep import PrepSpec, load_dataset


def run(path: str = "../shared/data/amazon2018_video_games", log=print) -> dict:
    import os

    with tempfile.TemporaryDirectory() as cache:
        previous = os.environ.get("JAXREC_CACHE")
        os.environ["JAXREC_CACHE"] = cache
        try:
            start = time.perf_counter()
            data = load_dataset(path, PrepSpec())
            cold = time.perf_counter() - start
            start = time.perf_counter()
            load_dataset(path, PrepSpec())
            cached = time.perf_counter() - start
        finally:
            if previous is None:
                os.environ.pop("JAXREC_CACHE")
            else:
                os.environ["JAXREC_CACHE"] = previous
    log(f"{data.num_users} users, {data.num_items} items, {len(data.items)} interactions")
    return {"bench": "data", "path": str(assets.resolve(path)), "interactions": int(len(data.items)),
            "cold_seconds": round(cold, 3), "cached_seconds": round(cached, 4)}
