"""``LM.encode``: packed rows and bucketed batches give the same vectors as
one text at a time, keep input order, and compile once per catalogue (packed)
or once per length bucket (padded)."""

from __future__ import annotations

import numpy as np
import pytest

import jaxrec
from jaxrec.shapes import bucket_length, pack_layout, plan_batches
from jaxrec.models import lm as lm_module
from tests.conftest import WORDS

TEXTS = [
    " ".join(WORDS[(i * 7) % len(WORDS) : (i * 7) % len(WORDS) + 1 + (i * 5) % 19] or WORDS[:3]) for i in range(37)
]


@pytest.fixture(scope="module")
def lm(tiny_checkpoints):
    return jaxrec.load_lm(tiny_checkpoints("llama-tied-gqa")[0])


def _one_at_a_time(lm, text, pooling, mask):
    ids = np.array([lm.tokenizer(text)["input_ids"]])
    states = np.asarray(lm.hidden_states(ids, mask=mask))[0]
    return states.mean(0) if pooling == "mean" else states[-1]


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("mask", ["bidirectional", "causal"])
@pytest.mark.parametrize("packed", [True, False])
def test_encode_equals_unbatched_pooling(lm, pooling, mask, packed):
    got = lm.encode(TEXTS, pooling=pooling, mask=mask, batch_size=8, packed=packed, tokens_per_batch=128)
    assert got.shape == (len(TEXTS), lm.config.hidden_size) and got.dtype == np.float32
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(got[i], _one_at_a_time(lm, TEXTS[i], pooling, mask), atol=2e-5, rtol=0)


def test_packed_encoding_compiles_once_and_puts_several_texts_in_a_row(lm):
    lengths = [len(ids) for ids in lm.tokenize(TEXTS)]
    layout = pack_layout(lengths, 64)
    assert layout.rows < len(TEXTS) / 3 and layout.max_segments > 3
    for r in range(layout.rows):  # segments of a row do not overlap and fit in it
        spans = sorted((layout.offset[i], layout.offset[i] + lengths[i]) for i in np.flatnonzero(layout.row == r))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= 64
    before = lm_module._segment_pooled._cache_size()
    first = lm.encode(TEXTS, tokens_per_batch=192)  # 3 rows per call: several calls
    second = lm.encode(list(reversed(TEXTS)), tokens_per_batch=192)
    assert lm_module._segment_pooled._cache_size() - before == 1
    np.testing.assert_allclose(second[::-1], first, atol=1e-6)


def test_encode_compiles_once_per_bucket(lm):
    lengths = [len(ids) for ids in lm.tokenize(TEXTS)]
    buckets = {batch.length for batch in plan_batches(lengths, 7)}  # a batch size no other test uses
    before = lm_module._pooled._cache_size()
    first = lm.encode(TEXTS, batch_size=7, pooling="mean", mask="bidirectional", packed=False)
    grew = lm_module._pooled._cache_size() - before
    assert grew == len(buckets) > 1
    second = lm.encode(list(reversed(TEXTS)), batch_size=7, pooling="mean", mask="bidirectional", packed=False)
    assert lm_module._pooled._cache_size() - before == grew
    np.testing.assert_allclose(second[::-1], first, atol=1e-6)


def test_encode_rejects_empty_text_and_bad_options(lm):
    with pytest.raises(ValueError, match="positions \\[1\\]"):
        lm.encode(["toy story", ""])
    with pytest.raises(ValueError, match="pooling"):
        lm.encode(["toy"], pooling="max")
    with pytest.raises(ValueError, match="mask"):
        lm.encode(["toy"], mask="prefix")


def test_model_without_tokenizer_says_how_to_add_one(tiny_checkpoints, tmp_path):
    import shutil

    source, _ = tiny_checkpoints("llama-tied-gqa")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, tmp_path / name)
    bare = jaxrec.load_lm(tmp_path)
    with pytest.raises(ValueError, match="tokenizer=PATH"):
        bare.encode(["toy"])
    with_tok = jaxrec.load_lm(tmp_path, tokenizer=source)
    assert with_tok.encode(["toy story"]).shape == (1, 64)


def test_bucket_lengths_bound_padding():
    for n in range(1, 3000):
        size = bucket_length(n)
        assert size >= n and (n <= 16 or size <= 1.5 * n + 1)
    assert len({bucket_length(n) for n in range(1, 4097)}) <= 20


def test_plan_covers_every_row_once():
    lengths = np.random.default_rng(0).integers(1, 200, size=101)
    plan = plan_batches(lengths, 16)
    seen = np.concatenate([b.indices for b in plan])
    assert sorted(seen.tolist()) == list(range(101))
    assert all(len(b.indices) <= 16 and lengths[b.indices].max() <= b.length for b in plan)
