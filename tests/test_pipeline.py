"""Grain batches: determinism, per-process sharding, exact continuation."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrec.data.batches import GrainBatches


def _example(index, rng):
    return {"index": index, "noise": rng.integers(0, 1 << 30)}


def _collate(rows):
    return {"index": np.array([r["index"] for r in rows]), "noise": np.array([r["noise"] for r in rows])}


def _batches(n=50, batch=8, seed=0, process_index=0, process_count=1):
    return GrainBatches(n, batch, _example, _collate, seed=seed, process_index=process_index, process_count=process_count)


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = _take(_batches(seed=1), 10), _take(_batches(seed=1), 10), _take(_batches(seed=2), 10)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["noise"], y["noise"])
    assert any(not np.array_equal(x["index"], z["index"]) for x, z in zip(a, c))


def test_every_epoch_is_a_permutation():
    batches = _take(_batches(n=48, batch=8), 12)  # two epochs of 6 batches
    first = np.concatenate([b["index"] for b in batches[:6]])
    second = np.concatenate([b["index"] for b in batches[6:]])
    assert sorted(first) == sorted(second) == list(range(48))
    assert not np.array_equal(first, second)


def test_two_processes_split_each_global_batch():
    single = _take(_batches(batch=8), 12)
    shards = [_take(_batches(batch=8, process_index=p, process_count=2), 12) for p in (0, 1)]
    for step, whole in enumerate(single):
        a, b = shards[0][step], shards[1][step]
        assert len(a["index"]) == len(b["index"]) == 4
        assert not set(a["index"]) & set(b["index"])
        np.testing.assert_array_equal(np.concatenate([a["index"], b["index"]]), whole["index"])
        # the per-example random draws do not depend on the process layout either
        merged = dict(zip(np.concatenate([a["index"], b["index"]]), np.concatenate([a["noise"], b["noise"]])))
        assert merged == dict(zip(whole["index"], whole["noise"]))


def test_restored_iterator_continues_exactly():
    straight = _batches(seed=5)
    expected = _take(straight, 9)
    first = _batches(seed=5)
    _take(first, 4)
    state = first.get_state()
    resumed = _batches(seed=5)
    resumed.set_state(state)
    for got, want in zip(_take(resumed, 5), expected[4:]):
        np.testing.assert_array_equal(got["index"], want["index"])
        np.testing.assert_array_equal(got["noise"], want["noise"])


def test_too_few_examples_or_uneven_split_is_an_error():
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        _batches(n=5, batch=8)
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        _batches(batch=8, process_count=3)


def test_worker_processes_give_the_same_batches_and_state():
    inline = _batches(seed=4)
    workers = GrainBatches(50, 8, _example, _collate, seed=4, workers=2)
    try:
        for _ in range(5):
            a, b = next(inline), next(workers)
            np.testing.assert_array_equal(a["index"], b["index"])
            np.testing.assert_array_equal(a["noise"], b["noise"])
        state = workers.get_state()
    finally:
        workers.close()
    resumed = GrainBatches(50, 8, _example, _collate, seed=4, workers=2)
    try:
        resumed.set_state(state)
        np.testing.assert_array_equal(next(resumed)["index"], next(inline)["index"])
    finally:
        resumed.close()


def test_index_batches_cover_each_epoch_split_over_processes_and_resume():
    from jaxrec.data.batches import IndexBatches

    collate = lambda rows, rng: {"rows": rows}
    single = IndexBatches(10, 4, collate, seed=3)
    assert single.steps_per_epoch == 2
    stream = np.concatenate([next(single)["rows"] for _ in range(5)])  # 20 positions = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])  # a new permutation each epoch
    halves = [IndexBatches(10, 4, collate, seed=3, process_index=p, process_count=2) for p in range(2)]
    joined = np.concatenate([np.concatenate([next(h)["rows"] for h in halves]) for _ in range(5)])
    np.testing.assert_array_equal(joined, stream)
    resumed = IndexBatches(10, 4, collate, seed=3)
    next(resumed)
    state = resumed.get_state()
    fresh = IndexBatches(10, 4, collate, seed=3)
    fresh.set_state(state)
    np.testing.assert_array_equal(next(fresh)["rows"], stream[4:8])
