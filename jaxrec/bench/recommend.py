"""Serving a finished seqrec run: single-request latency through the Python
API and through the HTTP service (on 127.0.0.1), batch throughput, and the
seconds to add new items (runs with LLM item vectors)."""

from __future__ import annotations

import time

import numpy as np

from jaxrec.recommend import USER_BATCH, Recommender


def _percentiles(seconds: list[float]) -> dict:
    p50, p99 = np.percentile(seconds, [50, 99]) * 1000
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def _histories(rec: Recommender, count: int, seed: int = 0) -> list[list[str]]:
    """Real histories of the run's dataset: users' most recent items."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, rec.data.num_users, count)
    return [[rec.item_ids[i] for i in rec.data.sequence(int(u))[-rec.max_history:]] for u in users]


def _http_latency(rec: Recommender, histories: list[list[str]], k: int) -> dict:
    import httpx

    from jaxrec.serve import create_app, serving

    times = []
    with serving(create_app(rec, new_items=False)) as url, httpx.Client(timeout=30) as client:
        for history in histories:
            start = time.perf_counter()
            response = client.post(f"{url}/recommend", json={"history": history, "k": k})
            times.append(time.perf_counter() - start)
            response.raise_for_status()
    return _percentiles(times)


def _adding_items(rec: Recommender, count: int, histories: list[list[str]], k: int, log) -> dict | None:
    """Seconds to embed ``count`` new items and rank them (the encoder loaded and
    compiled first, as the service does at start-up); None for an ID-only run."""
    from jaxrec.errors import RunError

    start = time.perf_counter()
    try:
        rec.prepare_new_items()
    except RunError as err:
        log(f"new items: skipped ({err})")
        return None
    prepare = time.perf_counter() - start
    catalogue = np.random.default_rng(2).choice(np.arange(1, len(rec.item_ids)), count, replace=count >= len(rec.item_ids))
    items = [{"id": f"bench-new-{n}", "title": rec.titles[i]} for n, i in enumerate(catalogue)]
    start = time.perf_counter()
    rec.add_items(items)
    rec.recommend(histories[0], k)  # rankable: the first request after the addition
    seconds = time.perf_counter() - start
    log(f"new items: {count} embedded and rankable in {seconds:.2f} s ({seconds / count * 1000:.1f} ms each; "
        f"encoder loaded and compiled at start-up in {prepare:.1f} s)")
    return {"items": count, "seconds": round(seconds, 3), "seconds_per_item": round(seconds / count, 5),
            "start_up_seconds": round(prepare, 2)}


def run(run_dir: str, requests: int = 300, batch_users: int = 8192, k: int = 10, add_items: int = 100,
        log=print) -> dict:
    start = time.perf_counter()
    rec = Recommender.load(run_dir)
    log(f"{rec.location}: {len(rec.item_ids) - 1} items, loaded in {time.perf_counter() - start:.1f} s")
    histories = _histories(rec, requests)
    rec.warm_up()
    times = []
    for history in histories:
        start = time.perf_counter()
        rec.recommend(history, k)
        times.append(time.perf_counter() - start)
    api = _percentiles(times)
    log(f"API, one request: p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms")
    many = _histories(rec, batch_users, seed=1)
    start = time.perf_counter()
    rec.recommend_batch(many, k)
    throughput = batch_users / (time.perf_counter() - start)
    log(f"batch: {throughput:,.0f} users/s ({batch_users} users, {USER_BATCH} a call, top {k} each)")
    result = {"run": str(rec.location), "items": len(rec.item_ids) - 1, "api": api,
              "batch_users_per_second": round(throughput, 1)}
    try:
        result["http"] = _http_latency(rec, histories, k)
        log(f"HTTP, one request at a time: p50 {result['http']['p50_ms']} ms, p99 {result['http']['p99_ms']} ms")
    except ImportError:
        log('HTTP: skipped (pip install -e ".[serve]")')
    if add_items:
        result["new_items"] = _adding_items(rec, add_items, histories, k, log)
    return result
