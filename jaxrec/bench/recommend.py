"""Serving a finished seqrec run: single-request latency through the Python
API and through the HTTP service (on 127.0.0.1), and batch throughput."""

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
    with serving(create_app(rec)) as url, httpx.Client(timeout=30) as client:
        for history in histories:
            start = time.perf_counter()
            response = client.post(f"{url}/recommend", json={"history": history, "k": k})
            times.append(time.perf_counter() - start)
            response.raise_for_status()
    return _percentiles(times)


def run(run_dir: str, requests: int = 300, batch_users: int = 8192, k: int = 10, log=print) -> dict:
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
    return result
