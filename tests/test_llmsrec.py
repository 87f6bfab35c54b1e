"""LLM-SRec: prompts, negatives, the teacher, and the task end to end on a tiny
random decoder distilling a SASRec trained on the synthetic successor data."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jaxrec import launch
from jaxrec.llmsrec.model import sample_negatives
from jaxrec.llmsrec.prompts import Prompts
from jaxrec.llmsrec.teacher import _latest
from jaxrec.train.checkpoint import Checkpointer
from tests.test_seqrec_task import NUM_ITEMS, write_successor_dataset


class _CharTokenizer:
    """One token per character (ids 1..), BOS 0 when special tokens are asked for."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [([0] if add_special_tokens else []) + [1 + ord(c) % 90 for c in t] for t in texts]}


def test_prompts_mark_each_history_item_and_end_with_the_output_token():
    titles = ["", "Alpha", "Be", "A much longer title than the others"]
    prompts = Prompts(_CharTokenizer(), titles, vocab_size=100, max_history=2, title_tokens=8)
    ids, items = prompts.user(np.array([3, 1, 2, 0]))  # only the latest two items, padding skipped
    assert ids[-1] == prompts.user_out_id
    marks = [i for i, t in enumerate(ids) if t == prompts.history_id]
    assert [items[i] for i in marks] == [1, 2] and sum(1 for x in items if x) == 2
    assert ids[marks[0] - len(prompts.titles[1]) : marks[0]] == prompts.titles[1]
    batch = prompts.users(np.array([[3, 1, 2], [3, 3, 0], [2, 0, 0]]), multiple=16)
    longest = batch["attention_mask"].sum(axis=1).max()
    assert batch["input_ids"].shape == (3, min(-(-longest // 16) * 16, prompts.user_length))
    for row in range(3):  # the output token is the last real one
        last = batch["attention_mask"][row].sum() - 1
        assert batch["input_ids"][row, last] == prompts.user_out_id
    table = prompts.all_items(3)
    assert table["input_ids"].shape == (4, prompts.item_length)
    assert [row[row > 0].tolist() for row in table["history_items"][1:]] == [[1], [2], [3]]
    assert len(prompts.titles[3]) == 8  # '"' + 7 characters: truncated to title_tokens


def test_negatives_are_uniform_over_the_other_items():
    target = np.array([1, 5, 9, 5] * 500, np.int32)
    drawn = np.asarray(sample_negatives(jax.random.key(0), target, 6, 9))
    assert drawn.min() >= 1 and drawn.max() <= 9
    assert not np.any(drawn == target[:, None])
    counts = np.bincount(drawn[target == 5].ravel(), minlength=10)[1:]
    assert counts[4] == 0 and counts.sum() == 6000
    np.testing.assert_allclose(np.delete(counts, 4) / 6000, 1 / 8, atol=0.02)


def test_latest_keeps_the_last_real_items():
    history = np.array([[1, 2, 3, 4, 5, 0], [7, 8, 0, 0, 0, 0]])
    np.testing.assert_array_equal(_latest(history, 3), [[3, 4, 5], [7, 8, 0]])


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llmsrec")
    data = write_successor_dataset(tmp / "data")
    teacher = tmp / "teacher"
    args = ["task=seqrec", f"data.name={data}", "data.k_core=1", f"run_dir={teacher}", "recommender.hidden=16",
            "recommender.heads=2", "recommender.max_history=6", "recommender.dropout=0.1", "batch.size=32",
            "optimizer.learning_rate=0.01", "loop.epochs=25", "loop.eval_every=1", "loop.monitor=recall@5", "loop.monitor_mode=max",
            "evaluation.shuffle=false"]
    assert launch.main([x for a in args for x in ("--set", a)]) == 0
    return teacher, data, tmp


def test_llmsrec_trains_only_the_heads_and_added_tokens(teacher_and_data, tiny_checkpoints, monkeypatch):
    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    teacher, data, tmp = teacher_and_data
    directory, _ = tiny_checkpoints("llama-tied-gqa")
    out = tmp / "distill"
    args = ["task=llmsrec", f"model.name={directory}", f"data.name={data}", "data.k_core=1", f"run_dir={out}",
            f"distill.teacher={teacher}", "distill.max_history=6", "distill.head_hidden=64", "distill.out_dim=32",
            "distill.negatives=4", "batch.size=16", "optimizer.learning_rate=0.003", "loop.epochs=30",
            "loop.eval_every=5", "loop.monitor=recall@5", "loop.monitor_mode=max", "evaluation.sampled_negatives=10",
            "evaluation.batch_size=32"]
    assert launch.main([x for a in args for x in ("--set", a)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    assert test["users"] == 90 and {"full", "sampled", "shuffled", "by_popularity"} <= set(test)
    # the decoder's weights are random and titles carry no signal: only the
    # injected teacher vectors do, so it ranks far above chance (5/30)
    assert test["full"]["recall@5"] > 0.5, test["full"]
    assert test["shuffled"]["full"]["recall@5"] < test["full"]["recall@5"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["distillation"] for r in rows if r["split"] == "train"]
    assert losses[-1] < 0.5 * losses[0], losses
    # checkpoints hold the heads and the added tokens only, never the frozen decoder
    trainable, extra = Checkpointer(out / "best").read()
    assert set(trainable["model"]["params"]) == {"heads", "llm"}
    assert set(trainable["model"]["params"]["llm"]) == {"extra_embedding"}
    assert extra["identity"]["task"] == "llmsrec"


def test_a_teacher_that_is_not_a_finished_seqrec_run_is_refused(teacher_and_data, tmp_path):
    from jaxrec.data.item_tables import DataError
    from jaxrec.llmsrec.teacher import Teacher

    teacher, _, _ = teacher_and_data
    with pytest.raises(DataError, match="holds no finished seqrec run; distill.teacher must be"):
        Teacher(tmp_path, ["", "a"])
    ids = [""] + json.loads((teacher / "item_ids.json").read_text())
    with pytest.raises(DataError, match="trained on other items"):
        Teacher(teacher, ids[:-1])
    loaded = Teacher(teacher, ids)
    assert loaded.item_table().shape == (NUM_ITEMS + 1, 16)
    assert loaded.user_vectors(np.array([[1, 2, 3, 0, 0, 0, 0, 0]])).shape == (1, 16)


def test_a_later_stage_gets_the_added_token_rows_of_an_llmsrec_run(teacher_and_data, tiny_checkpoints, monkeypatch):
    import jaxrec
    from jaxrec.models.lm import LM

    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    teacher, data, tmp = teacher_and_data
    directory, _ = tiny_checkpoints("llama-tied-gqa")
    out, embed = tmp / "distill-short", tmp / "embed-after-distill"
    args = ["task=llmsrec", f"model.name={directory}", f"data.name={data}", "data.k_core=1", f"run_dir={out}",
            f"distill.teacher={teacher}", "distill.max_history=6", "distill.head_hidden=16", "distill.out_dim=8",
            "batch.size=16", "optimizer.learning_rate=0.01", "loop.epochs=1", "evaluation.shuffle=false",
            "evaluation.batch_size=32"]
    assert launch.main([x for a in args for x in ("--set", a)]) == 0
    args = ["task=encode", f"model.init_from={out}", f"data.name={data}", f"run_dir={embed}", "encode.batch_size=8"]
    assert launch.main([x for a in args for x in ("--set", a)]) == 0

    trainable, _ = Checkpointer(out / "checkpoints").read()
    rows = np.asarray(trainable["model"]["params"]["llm"]["extra_embedding"])
    base = jaxrec.load_lm(directory)
    by_hand = LM(base.config.replace(extra_tokens=3), {**base.params, "extra_embedding": rows}, base.tokenizer)
    loaded = jaxrec.load_lm(out)
    assert loaded.config.extra_tokens == 3
    np.testing.assert_array_equal(np.asarray(loaded.params["extra_embedding"]), rows)
    ids = np.array([[5, base.config.vocab_size, 7, base.config.vocab_size + 2]])  # two added tokens
    np.testing.assert_allclose(np.asarray(loaded.hidden_states(ids)), np.asarray(by_hand.hidden_states(ids)), atol=1e-5)
    titles = [line.split("\t")[1] for line in (data / "items.tsv").read_text().splitlines()[1:]]
    np.testing.assert_allclose(np.load(embed / "item_embeddings.npy"), by_hand.encode(titles, batch_size=8), atol=1e-5)
    manifest = json.loads((embed / "manifest.json").read_text())
    assert [r["task"] for r in manifest["chain"]] == ["llmsrec"]
