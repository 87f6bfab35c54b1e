"""Interaction readers, preprocessing and leave-one-out splits, on fixtures
and on the real datasets in ../shared/data and ml-100k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxrec.methods.llm2rec.csft import csft_example, csft_targets
from jaxrec.data.interactions import read_recbole_interactions, read_tsv_interactions
from jaxrec.data.item_tables import DataError
from jaxrec.data.prep import PrepSpec, k_core, load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = {  # counts from each SOURCE.md
    "amazon2018_video_games": (50_597, 16_874, 453_637),
    "amazon2014_beauty": (22_332, 12_086, 198_215),
    "steam_100k": (10_369, 3_593, 126_824),
}


def _write(directory: Path, interactions: str, items: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\n" + interactions)
    (directory / "items.tsv").write_text("item_id\ttitle\n" + items)
    return directory


def test_sequences_are_chronological_and_keep_file_order_in_ties(tmp_path):
    rows = "u2\ta\t30\nu1\tb\t20\nu1\tc\t10\nu2\td\t30\nu1\te\t20\nu2\tf\t5\n"
    items = "".join(f"{i}\tTitle {i}\n" for i in "abcdef")
    data = load_dataset(_write(tmp_path, rows, items), PrepSpec(k_core=0), cache=False)
    assert list(data.user_ids) == ["u2", "u1"]
    sequences = [[data.item_ids[i] for i in data.sequence(u)] for u in range(2)]
    assert sequences == [["f", "a", "d"], ["c", "b", "e"]]
    assert data.item_ids[0] == "" and data.items.min() == 1  # 0 is padding


def test_untitled_items_and_short_users_are_dropped_and_reported(tmp_path):
    rows = "".join(f"u1\t{i}\t{t}\n" for t, i in enumerate("abcd")) + "u2\ta\t1\nu2\tb\t2\n"
    items = "a\tA\nb\tB\nc\t\nd\tD\n"
    data = load_dataset(_write(tmp_path, rows, items), PrepSpec(k_core=0), cache=False)
    assert data.report["items_without_title"] == 1 and data.report["interactions_with_untitled_items"] == 1
    assert data.report["users_with_under_3_interactions"] == 1
    assert list(data.user_ids) == ["u1"] and data.num_items == 3


def test_rating_threshold_needs_ratings(tmp_path):
    directory = _write(tmp_path, "u\ta\t1\n", "a\tA\n")
    with pytest.raises(DataError, match="no rating column"):
        load_dataset(directory, PrepSpec(min_rating=4), cache=False)


def test_recbole_reader_with_ratings(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t200\n1\t11\t3\t100\n")
    log = read_recbole_interactions(path)
    assert list(log.items) == ["10", "11"] and list(log.ratings) == [5.0, 3.0]


@pytest.mark.parametrize(
    "content,message",
    [
        ("user_id\titem_id\ttimestamp\nu\ti\tyesterday\n", "yesterday"),
        ("user_id\titem\ttimestamp\nu\ti\t1\n", "lacks column"),
        ("", "empty file"),
        ("user_id\titem_id\ttimestamp\n", "no interactions"),
    ],
)
def test_bad_interaction_files_are_named(tmp_path, content, message):
    path = tmp_path / "interactions.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_tsv_interactions(path)
    assert "interactions.tsv" in str(info.value)


def test_k_core_is_iterative():
    users = np.array(["u1", "u1", "u2", "u2", "u3", "u3"])
    items = np.array(["x", "z", "x", "y", "y", "z"])
    assert k_core(users, items, 2).all()  # every user and item has 2
    # y has one interaction: dropping it leaves u2 with one, which then drops; u1 and u4 stay
    users = np.array(["u1", "u1", "u2", "u2", "u4", "u4"])
    items = np.array(["x", "z", "x", "y", "x", "z"])
    assert k_core(users, items, 2).tolist() == [True, True, False, False, True, True]
    # a cascade that empties everything: a single pass would still keep three rows
    users = np.array(["u1", "u1", "u2", "u2", "u3"])
    items = np.array(["x", "z", "x", "y", "z"])
    assert not k_core(users, items, 2).any()


def test_cache_is_reused_and_keyed_by_options(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREC_CACHE", str(tmp_path / "cache"))
    rows = "".join(f"u{u}\t{i}\t{t}\n" for u in range(3) for t, i in enumerate("abcd"))
    directory = _write(tmp_path / "d", rows, "".join(f"{i}\t{i.upper()}\n" for i in "abcd"))
    first = load_dataset(directory, PrepSpec(k_core=0))
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 1
    again = load_dataset(directory, PrepSpec(k_core=0))
    np.testing.assert_array_equal(first.items, again.items)
    assert again.titles == first.titles
    load_dataset(directory, PrepSpec(k_core=3))
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 2


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_dataset_counts_leakage_and_idempotent_5_core(name, tmp_path, monkeypatch):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not present (the shared datasets live beside the repository)")
    monkeypatch.setenv("JAXREC_CACHE", str(tmp_path))
    data = load_dataset(path, PrepSpec(k_core=5))
    assert (data.num_users, data.num_items, len(data.items)) == REAL[name]
    assert data.report["interactions_removed_by_k_core"] == 0  # already 5-core: nothing changes
    assert data.stats["length_quantiles"][0] >= 5
    for user in range(0, data.num_users, 97):
        seq = data.sequence(user)
        times = data.timestamps[data.offsets[user] : data.offsets[user + 1]]
        assert np.all(np.diff(times) >= 0)
        valid_history, valid_target = data.split(user, "valid")
        test_history, test_target = data.split(user, "test")
        assert valid_target == seq[-2] and test_target == seq[-1]
        np.testing.assert_array_equal(test_history, seq[:-1])
        np.testing.assert_array_equal(valid_history, seq[:-2])
    targets = csft_targets([list(s) for s in data.train_sequences()[:200]], holdout=0)
    for user, position in targets:  # training targets sit strictly before the validation position
        assert position < len(data.sequence(user)) - 2


def test_ml100k(ml100k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREC_CACHE", str(tmp_path))
    data = load_dataset(ml100k_dir, PrepSpec(k_core=0))
    assert (data.num_users, data.num_items, len(data.items)) == (943, 1682, 100_000)
    assert data.attributes[1]["class"]


def test_csft_targets_leave_out_validation_and_test_items():
    pairs = csft_targets([list("abcdef"), list("xyz")])
    assert pairs.tolist() == [[0, 1], [0, 2], [0, 3]]  # the user with 3 items has no training target


def test_csft_example_truncates_history_from_the_left(tiny_checkpoints):
    import jaxrec

    tok = jaxrec.load_lm(tiny_checkpoints("llama-tied-gqa")[0]).tokenizer
    history = ["toy story", "star wars", "space quest"]
    target_ids = tok("call of duty\n", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for separator in ("", ", "):  # the authors' code: nothing between the history and the target
        ids, target = csft_example(tok, history, "call of duty", max_length=9, separator=separator)
        history_ids = tok("toy story, star wars, space quest" + separator, add_special_tokens=False)["input_ids"]
        keep = 9 - len(target_ids)
        assert ids == history_ids[-keep:] + target_ids  # the oldest history tokens are cut
        assert target == [0] * keep + [1] * len(target_ids)
    # the exact ids of the default: the titles' words, two commas, then the target's words, newline, EOS
    ids, _ = csft_example(tok, ["toy story", "star wars"], "space quest", max_length=64)
    words = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    assert ids == words("toy story") + words(",") + words("star wars") + words("space quest") + words("\n") + [tok.eos_token_id]
    assert ids != csft_example(tok, ["toy story", "star wars"], "space quest", 64, separator=", ")[0]


def test_user_sampling_is_seeded_and_history_windows_cut_old_items(tmp_path):
    rows = "".join(f"u{u}\t{i}\t{t}\n" for u in range(10) for t, i in enumerate("abcdef"))
    directory = _write(tmp_path, rows, "".join(f"{i}\t{i.upper()}\n" for i in "abcdef"))
    a = load_dataset(directory, PrepSpec(k_core=0, sample_users=4, seed=1), cache=False)
    b = load_dataset(directory, PrepSpec(k_core=0, sample_users=4, seed=1), cache=False)
    c = load_dataset(directory, PrepSpec(k_core=0, sample_users=4, seed=2), cache=False)
    assert a.num_users == 4 and list(a.user_ids) == list(b.user_ids) and set(a.user_ids) != set(c.user_ids)
    history, target = a.split(0, "test", max_history=3)
    np.testing.assert_array_equal(history, a.sequence(0)[-4:-1])
    assert target == a.sequence(0)[-1]


def test_item_sampling_keeps_each_kept_items_interactions_and_drops_users_left_too_short(tmp_path):
    # user u<k> has the first k + 2 of the items a..h
    rows = "".join(f"u{k}\t{i}\t{t}\n" for k in range(1, 7) for t, i in enumerate("abcdefgh"[:k + 2]))
    directory = _write(tmp_path, rows, "".join(f"{i}\t{i.upper()}\n" for i in "abcdefgh"))
    full = load_dataset(directory, PrepSpec(k_core=0), cache=False)
    sampled = load_dataset(directory, PrepSpec(k_core=0, sample_items=4, seed=3), cache=False)
    again = load_dataset(directory, PrepSpec(k_core=0, sample_items=4, seed=3), cache=False)
    assert sampled.num_items <= 4 and list(sampled.item_ids) == list(again.item_ids)
    kept = set(sampled.item_ids[1:])
    for u, user in enumerate(full.user_ids):
        own = [i for i in full.item_ids[full.sequence(u)] if i in kept]
        if len(own) >= 3:  # a user with enough kept items stays, with exactly those, in order
            row = list(sampled.user_ids).index(user)
            assert list(sampled.item_ids[sampled.sequence(row)]) == own
        else:
            assert user not in sampled.user_ids
    assert sampled.report["items_not_sampled"] == 4
    assert sampled.report["users_too_short_after_item_sampling"] == full.num_users - sampled.num_users


def test_duplicate_rows_are_dropped_and_missing_items_reported_as_missing(tmp_path):
    rows = "u1\ta\t1\nu1\tb\t2\nu1\ta\t1\nu1\tc\t3\nu1\tz\t4\nu1\ty\t5\nu1\tz\t6\n"
    items = "a\tA\nb\tB\nc\tC\nd\t\n"
    data = load_dataset(_write(tmp_path, rows, items), PrepSpec(k_core=1), cache=False)
    assert data.report["duplicate_interactions"] == 1
    assert data.report["items_missing_from_item_file"] == 2  # z and y
    assert data.report["interactions_with_items_missing_from_item_file"] == 3
    assert data.report["items_without_title"] == 0
    assert [data.item_ids[i] for i in data.sequence(0)] == ["a", "b", "c"]
    from jaxrec.data.prep import describe_drops

    lines = describe_drops(data.report)
    assert "duplicate interactions: 1" in lines and "items missing from item file: 2" in lines


@pytest.mark.parametrize("bad_file", ["interactions.tsv", "items.tsv"])
def test_invalid_utf8_names_the_file_and_line(tmp_path, bad_file):
    directory = _write(tmp_path, "u1\ta\t1\nu1\tb\t2\nu1\tc\t3\n", "a\tA\nb\tB\nc\tC\n")
    path = directory / bad_file
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2] + b"\xff\xfe"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=rf"{path}:3: not valid UTF-8"):
        load_dataset(directory, PrepSpec(k_core=1), cache=False)


def test_invalid_utf8_in_an_amazon_file_names_the_line(tmp_path):
    import gzip

    from jaxrec.data.amazon import json_lines

    path = tmp_path / "Video_Games.json.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"reviewerID": "u"}\n{"reviewerID": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid UTF-8"):
        list(json_lines(path, {}))
