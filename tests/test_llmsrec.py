"""LLM-SRec: prompts, negatives, the teacher, and the task end to end on a tiny
random decoder distilling a SASRec trained on the synthetic successor data."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrec import launch
from jaxrec.data.prep import SeqData
from jaxrec.methods.llmsrec.prompts import InteractionDays, Prompts, date_text
from jaxrec.methods.llmsrec.teacher import _latest
from jaxrec.train.checkpoint import Checkpointer
from tests.test_seqrec_task import NUM_ITEMS, write_successor_dataset


class _CharTokenizer:
    """One token per character (ids 1..60, inside every test vocabulary: an id past it would be
    read as an added token), BOS 0 when special tokens are asked for."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [([0] if add_special_tokens else []) + [1 + ord(c) % 60 for c in t] for t in texts]}


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


def test_item_vectors_from_a_gradient_free_prompt_start_equal_the_whole_prompts_with_the_same_gradients():
    """The item path runs each prompt's start forward only (or gathers its keys and
    values from the catalogue's, computed once) and continues it from
    [HistoryEmb]: vectors and gradients (heads, added rows) equal those of the
    whole prompts run at once."""
    import flax.linen as nn
    import jax.numpy as jnp

    from jaxrec.methods.llmsrec.model import DistillHeads, Distiller, item_start_cache
    from jaxrec.methods.llmsrec.prompts import EXTRA_TOKENS
    from jaxrec.models.decoder import Decoder
    from tests.test_properties import CONFIG

    titles = ["", "Alpha", "Be", "A much longer title than the others", "Gamma ray"]
    prompts = Prompts(_CharTokenizer(), titles, vocab_size=CONFIG.vocab_size, max_history=2, title_tokens=12)
    model = Distiller(Decoder(CONFIG.replace(extra_tokens=EXTRA_TOKENS)), DistillHeads(CONFIG.hidden_size, 16, 8))
    ids = jnp.zeros((1, 4), jnp.int32)
    llm = nn.unbox(model.decoder.init(jax.random.key(0), ids))["params"]
    teacher = np.asarray(jax.random.normal(jax.random.key(1), (len(titles), 6)))
    parts = prompts.item_parts(len(titles) - 1)
    variables = {"params": {"llm": llm, "heads": model.init_heads(jax.random.key(2), 6)},
                 "constants": {"teacher_items": jnp.asarray(teacher),
                               **{f"item_{k}": jnp.asarray(v) for k, v in parts.items()}}}
    whole = {k: jnp.asarray(v) for k, v in prompts.all_items(len(titles) - 1).items()}
    assert parts["start_ids"].shape[1] + len(parts["end_ids"]) == whole["input_ids"].shape[1]
    items = jnp.array([3, 1, 4, 2, 3])

    def merged(trainable):  # what LLM-SRec trains: the heads and the added rows
        return {**variables, "params": {"heads": trainable["heads"], "llm": {**llm, "extra_embedding": trainable["extra"]}}}

    def by_parts(trainable):
        return model.item_vectors(merged(trainable), items)

    cache = item_start_cache(model.decoder, llm, parts["start_ids"], parts["start_mask"], batch_size=2)
    assert cache["item_start_k"].shape[:3] == (CONFIG.num_layers, len(titles), parts["start_ids"].shape[1])

    def cached(trainable):  # the starts' keys and values gathered from the catalogue's, computed once
        with_cache = merged(trainable)
        return model.item_vectors({**with_cache, "constants": {**with_cache["constants"], **cache}}, items)

    def at_once(trainable):
        return model.head(merged(trainable), "item", model.states(merged(trainable), {k: v[items] for k, v in whole.items()}))

    # added rows of unit scale: at the init's 0.02 the first RMSNorm divides by
    # their tiny norm, and float32 rounding alone moves their gradient by ~1e-3
    trainable = {"heads": variables["params"]["heads"], "extra": jax.random.normal(jax.random.key(4), llm["extra_embedding"].shape)}
    by_parts, at_once, cached = (jax.jit(f) for f in (by_parts, at_once, cached))  # eager scans are slow
    np.testing.assert_allclose(by_parts(trainable), at_once(trainable), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached(trainable), by_parts(trainable), rtol=1e-6, atol=1e-6)
    weights = jax.random.normal(jax.random.key(3), (len(items), 8))
    grads = [jax.jit(jax.grad(lambda t: jnp.sum(f(t) * weights)))(trainable) for f in (by_parts, at_once, cached)]
    for path, value in jax.tree_util.tree_leaves_with_path(grads[1]):
        scale = float(np.abs(value).max())
        for other in (grads[0], grads[2]):
            parted = [leaf for p, leaf in jax.tree_util.tree_leaves_with_path(other) if p == path][0]
            np.testing.assert_allclose(parted, value, rtol=0, atol=1e-3 * scale + 1e-9, err_msg=jax.tree_util.keystr(path))
    assert np.abs(grads[0]["extra"]).max() > 0 and np.abs(grads[0]["heads"]["history"]["Dense_0"]["kernel"]).max() > 0


def _toy_data(sequences: list[list[int]], days: list[list[int]], num_items: int) -> SeqData:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])])
    return SeqData(item_ids=np.array([""] + [f"i{i}" for i in range(1, num_items + 1)]),
                   titles=[""] + [f"T{i}" for i in range(1, num_items + 1)], attributes=[{}] * (num_items + 1),
                   user_ids=np.array([f"u{u}" for u in range(len(sequences))]), offsets=offsets,
                   items=np.concatenate(sequences).astype(np.int32),
                   timestamps=np.concatenate(days).astype(np.float64) * 86400 + 3600, stats={}, report={})


def test_user_prompts_show_each_items_date_which_follows_the_item_when_shuffled():
    data = _toy_data([[1, 2, 3, 2], [3, 1, 4]], [[100, 200, 300, 400], [5, 6, 7]], num_items=4)
    days = InteractionDays(data)
    history = np.array([[1, 2, 3], [3, 1, 0]])
    np.testing.assert_array_equal(days(np.array([0, 1]), history), [[100, 400, 300], [5, 6, -1]])  # item 2: latest
    np.testing.assert_array_equal(days(np.array([0]), history[:1, ::-1]), [[300, 400, 100]])
    assert date_text(100) == "1970-04-11"
    prompts = Prompts(_CharTokenizer(), data.titles, vocab_size=100, max_history=2, title_tokens=8,
                      days=days.all_days())
    ids, _ = prompts.user(history[0], days(np.array([0]), history[:1])[0])
    chars = lambda text: _CharTokenizer()([text], add_special_tokens=False)["input_ids"][0]
    expected = (chars('Item No.1, Time: 1971-02-05, "T2"') + [prompts.history_id]  # the latest two items
                + chars(',Item No.2, Time: 1970-10-28, "T3"') + [prompts.history_id])
    assert any(ids[i : i + len(expected)] == expected for i in range(len(ids)))
    assert len(ids) <= prompts.user_length
    with pytest.raises(ValueError, match="pass each history item's day"):
        prompts.user(history[0])
    with pytest.raises(ValueError, match="not one of its user's items"):
        days(np.array([1]), np.array([[2]]))


def test_training_negatives_are_distinct_and_never_among_the_users_training_items():
    from jaxrec.seqrec.histories import training_user_items

    rng = np.random.default_rng(0)
    sequences = [list(rng.choice(np.arange(1, 13), size=n, replace=False)) for n in (10, 5, 3, 8)]
    data = _toy_data(sequences, [list(range(len(s))) for s in sequences], num_items=12)
    own = training_user_items(data)
    users = np.repeat(np.arange(4), 200)
    drawn = own.sample(rng, users, 3)
    for row, user in zip(drawn, users):
        assert len(set(row.tolist())) == 3 and not set(row.tolist()) & set(sequences[user][:-2])
    # the validation and test items are not training items: they may be drawn
    held_out = {int(i) for i in sequences[0][-2:]}
    assert held_out & set(drawn[users == 0].ravel().tolist())


def test_latest_keeps_the_last_real_items():
    history = np.array([[1, 2, 3, 4, 5, 0], [7, 8, 0, 0, 0, 0]])
    np.testing.assert_array_equal(_latest(history, 3), [[3, 4, 5], [7, 8, 0]])


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llmsrec")
    data = write_successor_dataset(tmp / "data")
    teacher = tmp / "teacher"
    args = ["task=seqrec", f"data.name={data}", "data.k_core=1", f"run_dir={teacher}", "recommender.backbone.hidden=16",
            "recommender.backbone.heads=2", "recommender.backbone.max_history=6", "recommender.backbone.dropout=0.1", "batch.size=32",
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
    assert summary["seeds"] == [0] and summary["over_seeds"]["sampled"]["ndcg@10"]["mean"] >= 0
    test = summary["per_seed"][0]["test"]
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

    # recommendations out of the run score as its evaluation did
    import jaxrec
    from jaxrec.errors import RunError
    from tests.test_recommend import _test_recall

    rec = jaxrec.Recommender.load(out)
    assert rec.needs_users  # its prompts show each item's date (the authors' default)
    assert _test_recall(rec, 5) == pytest.approx(test["full"]["recall@5"], abs=1e-6)
    user = str(rec.data.user_ids[0])
    history = rec.user_history(user)[-3:]
    assert len(rec.recommend(history, k=5, user=user)) == 5
    with pytest.raises(ValueError, match="name the user whose history it is"):
        rec.recommend(history, k=5)
    with pytest.raises(RunError, match="LLM-SRec runs do not take new items"):
        rec.add_items([{"id": "new", "title": "T"}])
    pytest.importorskip("fastapi", reason="the service's extra")
    from fastapi.testclient import TestClient

    from jaxrec.serve import create_app

    with TestClient(create_app(rec, new_items=False)) as client:
        answer = client.post("/recommend", json={"history": history, "k": 5, "user": user})
        assert answer.status_code == 200
        assert [r["item_id"] for r in answer.json()["items"]] == [r.item_id for r in rec.recommend(history, 5, user=user)]
        assert client.post("/recommend", json={"history": history}).status_code == 422
        other = next(i for i in rec.item_ids[1:] if i not in rec.user_history(user))
        refused = client.post("/recommend", json={"history": [other], "user": user})
        assert refused.status_code == 422 and "is not one of user" in refused.json()["error"]


def test_training_leaves_the_decoder_bitwise_unchanged_and_moves_only_the_added_rows(teacher_and_data, tiny_checkpoints):
    from jaxrec.registry import build_config
    from jaxrec.methods.llmsrec.task import build_training

    teacher, data_dir, _ = teacher_and_data
    directory, _ = tiny_checkpoints("llama-tied-gqa")
    config = build_config({"task": "llmsrec", "model": {"name": str(directory)},
                           "data": {"name": str(data_dir), "k_core": 1}, "batch": {"size": 16},
                           "distill": {"teacher": str(teacher), "max_history": 6, "head_hidden": 16, "out_dim": 8},
                           "optimizer": {"learning_rate": 0.01}})
    quiet = lambda *_: None
    training = build_training(config, config.data.load(config.seed, quiet), config.model.load(), quiet)
    before = jax.tree.map(np.array, training.engine.variables()["params"])
    for _, batch in zip(range(3), training.batches):
        assert np.isfinite(float(training.engine.train_step(batch)["loss"]))
    after = jax.tree.map(np.array, training.engine.variables()["params"])
    frozen = lambda tree: {k: v for k, v in tree["llm"].items() if k != "extra_embedding"}
    for (path, old), new in zip(jax.tree_util.tree_leaves_with_path(frozen(before)), jax.tree.leaves(frozen(after))):
        assert np.array_equal(old, new), f"decoder weight {jax.tree_util.keystr(path)} changed"
    added_old, added_new = before["llm"]["extra_embedding"], after["llm"]["extra_embedding"]
    assert added_old.shape[0] == 3  # [HistoryEmb], [UserOut], [ItemOut]: the only rows added to the vocabulary
    # [UserOut] and [ItemOut] train; [HistoryEmb]'s row is always replaced by f_I of the item, so it gets no gradient
    assert not np.allclose(added_old[1:], added_new[1:]) and np.array_equal(added_old[0], added_new[0])
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["heads"]), jax.tree.leaves(after["heads"])))


def test_a_teacher_that_is_not_a_finished_seqrec_run_is_refused(teacher_and_data, tmp_path):
    from jaxrec.data.item_tables import DataError
    from jaxrec.methods.llmsrec.teacher import Teacher

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

    # exported for PyTorch, the added tokens are vocabulary rows with their names
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jaxrec import export

    exported = tmp / "distill-exported"
    assert export.main(["--run", str(out), "--to", str(exported)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    vocab = base.config.vocab_size
    assert tokenizer.convert_tokens_to_ids(["[HistoryEmb]", "[UserOut]", "[ItemOut]"]) == [vocab, vocab + 1, vocab + 2]
    model = AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    with torch.no_grad():
        states = model(torch.as_tensor(ids), output_hidden_states=True).hidden_states[-1].numpy()
    np.testing.assert_allclose(states, np.asarray(by_hand.hidden_states(ids)), atol=1e-4)


QUICK = Path(__file__).resolve().parents[1] / "configs" / "llmsrec" / "quick_ml100k.yaml"


def test_llmsrec_pipeline_with_both_ablations_and_the_diagnostics_report(tmp_path_factory, monkeypatch):
    from tests.test_pipelines import GAMES, real_slice

    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    data, model_dir = real_slice(GAMES, tmp_path_factory.mktemp("games-llmsrec"), 40)
    run_dir = tmp_path_factory.mktemp("llmsrec-pipeline") / "run"
    settings = [f"run_dir={run_dir}", f"model.name={model_dir}", f"data.name={data}", "data.sample_items=null",
                "data.sample_users=null", "evaluation.sampled_negatives=20", "evaluation.batch_size=16",
                "stages.teacher.loop.epochs=10", "stages.teacher.recommender.backbone.max_history=20"]
    for stage in ("llmsrec", "without_distillation_and_uniformity", "without_uniformity"):
        settings += [f"stages.{stage}.distill.head_hidden=32", f"stages.{stage}.distill.out_dim=16",
                     f"stages.{stage}.batch.size=8", f"stages.{stage}.loop.epochs=1"]
    assert launch.main(["--config", str(QUICK)] + [a for s in settings for a in ("--set", s)]) == 0

    results = json.loads((run_dir / "results.json").read_text())
    assert results["protocol"] == "sampled" and results["shuffle"]
    assert [r["stage"] for r in results["rows"]] == ["teacher", "llmsrec", "without_distillation_and_uniformity",
                                                      "without_uniformity"]
    for row in results["rows"]:
        assert set(row["metrics"]) == {"ndcg@10", "recall@10", "ndcg@20", "recall@20"}
        assert all(0 <= row["shuffled"]["metrics"][m]["mean"] <= 1 for m in row["metrics"])
        assert -1 <= row["shuffled"]["cosine"]["mean"] <= 1
        assert {"popular", "cold"} <= set(row["groups"]["by_popularity"])  # warm / cold items
    # the ablations train what they say: no distillation or uniformity term moves them
    weights = {"llmsrec": (1.0, 1.0), "without_distillation_and_uniformity": (0.0, 0.0), "without_uniformity": (1.0, 0.0)}
    for stage, (distillation, uniformity) in weights.items():
        config = json.loads((run_dir / stage / "manifest.json").read_text())["config"]["distill"]
        assert (config["distillation_weight"], config["uniformity_weight"]) == (distillation, uniformity)
        assert config["teacher"] == str(run_dir / "teacher")
    report = (run_dir / "results.md").read_text()
    assert "### Shuffled test histories" in report and "| LLM-SRec | " in report and "cosine" in report
    for png in ("metrics.png", "shuffle.png", "groups.png", "training_curves.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
