"""Amazon Reviews 2018 / 2023 readers on small fixtures written in the exact formats."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from jaxrec.data.item_tables import DataError
from jaxrec.data.prep import PrepSpec, load_dataset


def _lines(path, records, raw_lines=()):
    text = "".join(json.dumps(r) + "\n" for r in records) + "".join(raw_lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)


def _amazon_2018(directory, five_core=True):
    directory.mkdir()
    reviews = [
        {"overall": 5.0, "verified": True, "reviewTime": "09 13, 2009", "reviewerID": f"U{u}", "asin": f"B0{i}",
         "reviewerName": "x", "reviewText": "fun", "summary": "ok", "unixReviewTime": 1_000_000 + 86400 * (u + i),
         "style": {"Format:": " Video Game"}}
        for u in range(4) for i in range(4)
    ]
    name = "Video_Games_5.json.gz" if five_core else "Video_Games.json.gz"
    _lines(directory / name, reviews, raw_lines=["{not json\n"])
    meta = [
        {"category": ["Video Games", "PC"], "description": ["A game"], "title": f"Game &amp; {i}", "brand": "Acme",
         "price": "$9.99", "asin": f"B0{i}", "also_buy": []}
        for i in range(4)
    ]
    _lines(directory / "meta_Video_Games.json.gz", meta)
    return directory


def test_amazon_2018_reviews_and_meta(tmp_path):
    data = load_dataset(_amazon_2018(tmp_path / "games"), PrepSpec(k_core=0), cache=False)
    assert (data.num_users, data.num_items, len(data.items)) == (4, 4, 16)
    assert data.titles[1] == "Game & 0"  # HTML entities unescaped
    assert data.attributes[1] == {"brand": "Acme", "category": ["Video Games", "PC"], "description": ["A game"], "price": "$9.99"}
    assert data.report["Video_Games_5.json.gz"] == {"malformed_lines": 1, "first_malformed_line": 17}
    assert data.report["amazon_release"] == 2018


REVIEWS_2023 = [
    {"rating": 4.0, "title": "t", "text": "x", "images": [], "asin": f"C{i}x", "parent_asin": f"C{i}",
     "user_id": f"V{u}", "timestamp": 1_588_687_728_000 + 1000 * (3 - i), "helpful_vote": 0, "verified_purchase": True}
    for u in range(3) for i in range(3)
]
META_2023 = [
    {"main_category": "All Beauty", "title": f"Cream {i}", "average_rating": 4.5, "rating_number": 10,
     "features": [], "description": [], "price": None, "images": [], "videos": [], "store": "Shop",
     "categories": [], "details": {"Brand": "B"}, "parent_asin": f"C{i}", "bought_together": None}
    for i in range(3)
]


def test_amazon_2023_millisecond_timestamps_and_details(tmp_path):
    directory = tmp_path / "beauty"
    directory.mkdir()
    _lines(directory / "All_Beauty.jsonl", REVIEWS_2023)
    _lines(directory / "meta_All_Beauty.jsonl", META_2023)
    data = load_dataset(directory, PrepSpec(k_core=0), cache=False)
    assert data.report["amazon_release"] == 2023
    first_user = [data.item_ids[i] for i in data.sequence(0)]
    assert first_user == ["C2", "C1", "C0"]  # chronological by millisecond timestamps
    assert data.timestamps[0] == pytest.approx(1_588_687_728.0)
    assert data.attributes[1] == {"store": "Shop", "details": ["Brand: B"]}


def test_meta_that_covers_no_reviewed_item_is_an_error(tmp_path):
    directory = _amazon_2018(tmp_path / "games")
    _lines(directory / "meta_Video_Games.json.gz", [{"asin": "Z1", "title": "Other"}])
    with pytest.raises(DataError, match="covers none of the 4 items"):
        load_dataset(directory, PrepSpec(k_core=0), cache=False)


def test_partly_covered_meta_is_reported(tmp_path):
    directory = _amazon_2018(tmp_path / "games")
    _lines(directory / "meta_Video_Games.json.gz", [{"asin": f"B0{i}", "title": f"G{i}"} for i in range(3)])
    data = load_dataset(directory, PrepSpec(k_core=0), cache=False)
    assert data.report["reviewed_items_missing_from_meta"] == 1
    assert data.num_items == 3 and not np.isin("B03", data.item_ids)


def test_amazon_2023_saved_with_hf_datasets_reads_as_the_json_lines(tmp_path):
    import datasets

    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    _lines(jsonl / "All_Beauty.jsonl", REVIEWS_2023)
    _lines(jsonl / "meta_All_Beauty.jsonl", META_2023)
    saved = tmp_path / "saved"
    # as the hub ships them: a DatasetDict with the split "full", details as JSON text
    reviews = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "images"} for r in REVIEWS_2023])
    datasets.DatasetDict({"full": reviews}).save_to_disk(str(saved / "raw_review_All_Beauty"))
    meta = [{**{k: v for k, v in m.items() if k not in ("images", "videos", "bought_together", "price")},
             "details": json.dumps(m["details"])} for m in META_2023]
    datasets.Dataset.from_list(meta).save_to_disk(str(saved / "raw_meta_All_Beauty"))

    expected = load_dataset(jsonl, PrepSpec(k_core=0), cache=False)
    data = load_dataset(saved, PrepSpec(k_core=0))  # cached by the saved files' checksums
    again = load_dataset(saved, PrepSpec(k_core=0))
    for got in (data, again):
        np.testing.assert_array_equal(got.items, expected.items)
        np.testing.assert_array_equal(got.item_ids, expected.item_ids)
        np.testing.assert_allclose(got.timestamps, expected.timestamps)
        assert got.titles == expected.titles and got.attributes == expected.attributes
    assert data.report["amazon_release"] == 2023


def _hub_records():
    reviews = [{k: v for k, v in r.items() if k != "images"} for r in REVIEWS_2023]
    meta = [{**{k: v for k, v in m.items() if k not in ("images", "videos", "bought_together", "price")},
             "details": json.dumps(m["details"])} for m in META_2023]
    return reviews, meta


def test_amazon_2023_in_the_offline_hf_cache_reads_as_the_json_lines(tmp_path, monkeypatch):
    """The hub cache layout <owner>___<repo>/<config>/<version>/<hash>/<name>-<split>[-shard].arrow,
    written by the Arrow writer that dataset builders use, the reviews in two shards."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    from jaxrec.errors import ConfigError
    from jaxrec.registry import load_config
    from jaxrec.tasks.specs import check_inputs

    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    _lines(jsonl / "All_Beauty.jsonl", REVIEWS_2023)
    _lines(jsonl / "meta_All_Beauty.jsonl", META_2023)
    reviews, meta = _hub_records()
    builder = tmp_path / "hf" / "datasets" / "McAuley-Lab___amazon-reviews-2023"
    half = len(reviews) // 2
    files = {"raw_review_All_Beauty": [("full-00000-of-00002", reviews[:half]), ("full-00001-of-00002", reviews[half:])],
             "raw_meta_All_Beauty": [("full", meta)]}
    for config, shards in files.items():
        directory = builder / config / "0.0.0" / "5f2b1c"
        directory.mkdir(parents=True)
        for suffix, records in shards:
            with ArrowWriter(path=str(directory / f"amazon-reviews-2023-{suffix}.arrow")) as writer:
                writer.write_table(datasets.Dataset.from_list(records).data.table)
                writer.finalize()
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    expected = load_dataset(jsonl, PrepSpec(k_core=0), cache=False)
    data = load_dataset("hf:All_Beauty", PrepSpec(k_core=0), cache=False)
    np.testing.assert_array_equal(data.items, expected.items)
    np.testing.assert_array_equal(data.item_ids, expected.item_ids)
    np.testing.assert_array_equal(data.offsets, expected.offsets)
    assert data.titles == expected.titles and data.attributes == expected.attributes
    same = load_dataset("hf:McAuley-Lab/Amazon-Reviews-2023/All_Beauty", PrepSpec(k_core=0), cache=False)
    np.testing.assert_array_equal(same.items, expected.items)
    with pytest.raises(DataError, match="no cached Arrow files for the config raw_review_Toys.*cached configs: raw_meta_All_Beauty, raw_review_All_Beauty"):
        load_dataset("hf:Toys", PrepSpec(k_core=0), cache=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="McAuley-Lab/Amazon-Reviews-2023 is not in the HF datasets cache"):
        check_inputs(load_config(None, ["task=seqrec", "data.name=hf:All_Beauty"]))


def test_a_saved_review_dataset_without_its_meta_names_what_is_missing(tmp_path):
    import datasets

    datasets.Dataset.from_list(REVIEWS_2023).save_to_disk(str(tmp_path / "reviews"))
    with pytest.raises(DataError, match="found the saved reviews dataset reviews but no meta dataset"):
        load_dataset(tmp_path, PrepSpec(k_core=0), cache=False)
