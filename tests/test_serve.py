"""The HTTP service: valid requests answered as the API answers them, every
bad request a 4xx with a reason, and a bounded load test on 127.0.0.1."""

from __future__ import annotations

import time

import numpy as np
import pytest

fastapi = pytest.importorskip("fastapi", reason="the service's extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the service's tests use httpx")
uvicorn = pytest.importorskip("uvicorn", reason="the service's extra: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

import jaxrec  # noqa: E402
from jaxrec.serve import MAX_BODY_BYTES, create_app, serving  # noqa: E402
from tests.test_recommend import llm_item_run  # noqa: E402,F401  (the fixture)
from tests.test_seqrec_task import seqrec_run  # noqa: E402,F401  (the fixture)


@pytest.fixture
def service(seqrec_run):  # noqa: F811
    run, tmp = seqrec_run
    run(tmp / "run", "loop.epochs=2")
    return jaxrec.Recommender.load(tmp / "run")


def test_requests_answered_and_bad_ones_refused_with_a_reason(service):
    with TestClient(create_app(service)) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["items"] == 30
        answer = client.post("/recommend", json={"history": ["i3", "Item number 4"], "k": 5})
        assert answer.status_code == 200
        expected = service.recommend(["i3", "i4"], k=5)
        assert [r["item_id"] for r in answer.json()["items"]] == [r.item_id for r in expected]
        np.testing.assert_allclose([r["score"] for r in answer.json()["items"]], [r.score for r in expected], rtol=1e-6)
        kept = client.post("/recommend", json={"history": ["i3"], "k": 29, "exclude_history": True}).json()["items"]
        assert len(kept) == 29 and "i3" not in {r["item_id"] for r in kept}
        bad = {
            "unknown item": (client.post("/recommend", json={"history": ["nope"]}), 404, "unknown item 'nope'"),
            "empty history": (client.post("/recommend", json={"history": []}), 422, "history"),
            "long history": (client.post("/recommend", json={"history": ["i1"] * 1001}), 422, "history"),
            "k too large": (client.post("/recommend", json={"history": ["i1"], "k": 31}), 422, "k"),
            "k zero": (client.post("/recommend", json={"history": ["i1"], "k": 0}), 422, "k"),
            "malformed JSON": (client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"}),
                               422, "JSON"),
            "oversized body": (client.post("/recommend", content=b"x" * (MAX_BODY_BYTES + 1),
                                           headers={"content-type": "application/json"}), 413, "request body over"),
        }
        for name, (response, status, reason) in bad.items():
            assert response.status_code == status, name
            assert reason in response.json()["error"], (name, response.json())
        assert client.get("/health").json()["status"] == "ok"  # still serving
        refused = client.post("/items", json={"items": [{"id": "x", "title": "Item number 1"}]})
        assert refused.status_code == 409 and "ID embeddings" in refused.json()["error"]  # an ID-only run


def test_new_items_through_the_service(llm_item_run):
    run, tmp = llm_item_run
    run(tmp / "run", "evaluation.seeds=[0]")
    rec = jaxrec.Recommender.load(tmp / "run")
    with TestClient(create_app(rec)) as client:
        added = client.post("/items", json={"items": [{"id": "new-3", "title": "Item number 3"},
                                                      {"id": "new-31", "title": "Item number 31"}]})
        assert added.status_code == 200, added.json()
        assert added.json()["added"] == ["new-3", "new-31"] and added.json()["items"] == 32
        assert client.get("/health").json()["items"] == 32
        top = client.post("/recommend", json={"history": ["i2"], "k": 32}).json()["items"]
        scores = {r["item_id"]: r["score"] for r in top}
        assert scores["new-3"] == pytest.approx(scores["i3"], rel=1e-5, abs=1e-5) and "new-31" in scores
        assert client.post("/recommend", json={"history": ["new-31"], "k": 3}).status_code == 200
        bad = {
            "known id": (client.post("/items", json={"items": [{"id": "i3", "title": "Item number 3"}]}), 409,
                         "already in the catalogue"),
            "no items": (client.post("/items", json={"items": []}), 422, "items"),
            "no title": (client.post("/items", json={"items": [{"id": "z"}]}), 422, "title"),
            "repeated id": (client.post("/items", json={"items": [{"id": "z", "title": "a"}, {"id": "z", "title": "b"}]}),
                            422, "more than once"),
        }
        for name, (response, status, reason) in bad.items():
            assert response.status_code == status, (name, response.json())
            assert reason in response.json()["error"], (name, response.json())


def test_load_on_localhost_loses_no_request(service):
    """2,000 requests from 8 concurrent clients against a real server on 127.0.0.1 (bounded in count and time)."""
    import asyncio

    with serving(create_app(service)) as base:
        url = f"{base}/recommend"
        expected = {i: [r.item_id for r in service.recommend([f"i{i}", f"i{(i + 1) % 30}"], k=3)] for i in range(30)}

        async def client(n: int, times: list, wrong: list):
            async with httpx.AsyncClient(timeout=30) as http:
                for j in range(250):
                    i = (n * 250 + j) % 30
                    start = time.perf_counter()
                    response = await http.post(url, json={"history": [f"i{i}", f"i{(i + 1) % 30}"], "k": 3})
                    times.append(time.perf_counter() - start)
                    if response.status_code != 200 or [r["item_id"] for r in response.json()["items"]] != expected[i]:
                        wrong.append((i, response.status_code))

        async def load():
            times, wrong = [], []
            await asyncio.wait_for(asyncio.gather(*(client(n, times, wrong) for n in range(8))), timeout=240)
            return times, wrong

        times, wrong = asyncio.run(load())
        assert len(times) == 2000 and not wrong
        p50, p99 = np.percentile(times, [50, 99]) * 1000
        print(f"\n2000 requests, 8 clients: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        health = httpx.get(f"{base}/health").json()
        assert health["requests"] == 2000 and health["batches"] < 2000  # concurrent requests shared batches
