"""Chronological sequences from interaction files (stable within timestamp ties)."""

from __future__ import annotations

import pytest

from jaxrec.data.examples import csft_example, csft_targets
from jaxrec.data.interactions import read_sequences
from jaxrec.data.items import DataError


def test_tsv_sequences_are_chronological_and_keep_file_order_in_ties(tmp_path):
    (tmp_path / "interactions.tsv").write_text(
        "user_id\titem_id\ttimestamp\n"
        "u2\ta\t30\nu1\tb\t20\nu1\tc\t10\nu2\td\t30\nu1\te\t20\nu2\tf\t5\n"
    )
    seqs = read_sequences(tmp_path)
    assert seqs.users == ["u2", "u1"]
    assert seqs.items == [["f", "a", "d"], ["c", "b", "e"]]


def test_recbole_inter_file(tmp_path):
    (tmp_path / "x.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t200\n1\t11\t3\t100\n"
    )
    assert read_sequences(tmp_path).items == [["11", "10"]]


def test_non_numeric_timestamps_are_named(tmp_path):
    (tmp_path / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\nu\ti\tyesterday\n")
    with pytest.raises(DataError, match="'timestamp' has non-numeric"):
        read_sequences(tmp_path)


def test_ml100k_counts(ml100k_dir):
    seqs = read_sequences(ml100k_dir)
    assert len(seqs) == 943 and sum(len(s) for s in seqs.items) == 100_000


def test_csft_targets_leave_out_validation_and_test_items():
    pairs = csft_targets([list("abcdef"), list("xyz")])
    assert pairs.tolist() == [[0, 1], [0, 2], [0, 3]]  # the user with 3 items has no training target


def test_csft_example_truncates_history_from_the_left(tiny_checkpoints):
    import jaxrec

    tok = jaxrec.load_lm(tiny_checkpoints("llama-tied-gqa")[0]).tokenizer
    ids, target = csft_example(tok, ["toy story", "star wars", "space quest"], "call of duty", max_length=9)
    assert len(ids) == len(target) == 9
    target_ids = tok("call of duty\n", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    history_ids = tok("toy story, star wars, space quest, ", add_special_tokens=False)["input_ids"]
    keep = 9 - len(target_ids)
    assert ids == history_ids[-keep:] + target_ids  # the oldest history tokens are cut
    assert target == [0] * keep + [1] * len(target_ids)
