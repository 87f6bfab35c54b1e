"""Recommendations out of a finished run: the API and the command score
exactly as the run's own evaluation did."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxrec
from jaxrec import recommend
from jaxrec.data.prep import load_dataset
from jaxrec.seqrec.histories import evaluation_examples
from tests.test_seqrec_task import seqrec_run  # noqa: F401  (the fixture)


def _test_recall(rec: recommend.Recommender, k: int) -> float:
    """Full-ranking Recall@k of the test split, scored through the API (ties at their expected place;
    row u of the split is user u, named where the run's prompts need the user's dates)."""
    history, targets, _ = evaluation_examples(rec.data, "test", rec.max_history)
    histories = [[rec.item_ids[i] for i in row[row > 0]] for row in history]
    scores = rec.scores(histories, [str(u) for u in rec.data.user_ids] if rec.needs_users else None)
    target = scores[np.arange(len(targets)), targets][:, None]
    higher, tied = (scores > target).sum(1), (scores == target).sum(1) - 1
    return float(np.mean(np.clip(k - higher, 0, tied + 1) / (tied + 1)))


@pytest.mark.parametrize("items, model", [("id", "sasrec"), ("llm", "sasrec"), ("id", "bert4rec")])
def test_api_scores_equal_the_runs_evaluation(seqrec_run, items, model, tmp_path, capsys):  # noqa: F811
    run, tmp = seqrec_run
    overrides = ["loop.epochs=3", "evaluation.seeds=[0, 1]", f"recommender.backbone.model={model}"]
    if model == "bert4rec":  # it reads a mask token's row after the catalogue's
        overrides.append("recommender.examples=sequences")
    if items == "llm":
        rng = np.random.default_rng(0)
        np.save(tmp / "emb.npy", rng.normal(size=(30, 12)).astype(np.float32) * 20)
        (tmp / "item_ids.json").write_text(json.dumps([f"i{i}" for i in range(30)]))
        overrides += ["recommender.items.kind=llm", f"recommender.items.embeddings={tmp / 'emb.npy'}",
                      "recommender.items.conditioning=standardize"]
    summary = run(tmp / "run", *overrides)
    rec = jaxrec.Recommender.load(tmp / "run")
    best = max(summary["per_seed"], key=lambda r: r["training"]["best_validation_recall@5"])
    assert rec.location == tmp / "run" / f"seed-{best['seed']}"  # the best seed by validation
    assert _test_recall(rec, 5) == pytest.approx(best["test"]["full"]["recall@5"], abs=1e-6)
    assert _test_recall(rec, 10) == pytest.approx(best["test"]["full"]["recall@10"], abs=1e-6)
    one_seed = jaxrec.Recommender.load(tmp / "run" / "seed-0")
    assert _test_recall(one_seed, 5) == pytest.approx(summary["per_seed"][0]["test"]["full"]["recall@5"], abs=1e-6)

    # ids and exact titles name the same items; the top k is sorted and can leave out the history
    top = rec.recommend(["i3", "Item number 4", "i5"], k=5)
    assert [r.score for r in top] == sorted((r.score for r in top), reverse=True) and len(top) == 5
    assert top == rec.recommend(["i3", "i4", "i5"], k=5)  # the same call size: the same numbers
    kept = rec.recommend(["i3", "i4", "i5"], k=29, exclude_history=True)
    assert {"i3", "i4", "i5"}.isdisjoint(r.item_id for r in kept) and len(kept) == 27
    batched, alone = rec.recommend_batch([["i3"], ["i7", "i8"]], k=3)[1], rec.recommend(["i7", "i8"], k=3)
    assert [r.item_id for r in batched] == [r.item_id for r in alone]  # call sizes differ: scores to rounding
    np.testing.assert_allclose([r.score for r in batched], [r.score for r in alone], rtol=1e-5)
    with pytest.raises(KeyError, match="unknown item 'nope'"):
        rec.recommend(["nope"])
    with pytest.raises(ValueError, match="k must be in 1..30"):
        rec.recommend(["i3"], k=31)
    with pytest.raises(ValueError, match="history 0 is empty"):
        rec.recommend([])

    # the command: a table for one history, every user's top k to a file
    assert recommend.main(["--run", str(tmp / "run"), "--history", "i3,i4,i5", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split()[:2] == ["1", top[0].item_id]
    users = tmp_path / "top.jsonl"
    assert recommend.main(["--run", str(tmp / "run"), "--all-users", "--to", str(users), "-k", "4"]) == 0
    rows = [json.loads(line) for line in users.read_text().splitlines()]
    assert len(rows) == rec.data.num_users and all(len(r["items"]) == 4 for r in rows)
    first = rows[0]
    assert [r["item_id"] for r in first["items"]] == [r.item_id for r in rec.recommend(rec.user_history(first["user"]), 4)]
    assert recommend.main(["--run", str(tmp / "run"), "--user", "nobody"]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err


@pytest.fixture
def llm_item_run(seqrec_run):  # noqa: F811
    """(run, tmp): the successor data with LLM item vectors from an encode run of a tiny LLaMA whose
    vocabulary covers the titles ("Item number N"), standardised and PCA-reduced."""
    from jaxrec import launch
    from tests.conftest import build_torch_model, save_tokenizer

    run, tmp = seqrec_run
    words = ["Item", "number", *map(str, range(40))]
    model_dir = tmp / "model"
    build_torch_model("llama-tied-gqa", vocab_size=3 + len(words)).save_pretrained(str(model_dir))
    save_tokenizer(model_dir, words)
    assert launch.main(["--set", "task=encode", "--set", f"model.name={model_dir}", "--set", f"data.name={tmp / 'data'}",
                        "--set", f"run_dir={tmp / 'embed'}"]) == 0
    llm = ["recommender.items.kind=llm", f"recommender.items.embeddings={tmp / 'embed'}", "recommender.items.conditioning=standardize",
           "recommender.items.pca=8", "loop.epochs=2"]
    return (lambda out, *overrides: run(out, *llm, *overrides)), tmp


def test_new_items_are_embedded_and_scored_as_the_catalogue_was(llm_item_run):
    from jaxrec import runs
    from jaxrec.data.item_tables import ItemTable
    from jaxrec.new_items import NewItemEncoder

    run, tmp = llm_item_run
    run(tmp / "run", "evaluation.seeds=[0]")
    rec = jaxrec.Recommender.load(tmp / "run")
    catalogue = [str(i) for i in rec.data.item_ids]
    # re-embedding the catalogue's own titles reproduces its frozen rows (encoder, conditioning and PCA)
    encoder = NewItemEncoder.of_run(rec.config, catalogue)
    stored = runs.trained_recommender(rec.location).params["constants"]["llm_items"][1:]
    again = encoder(ItemTable(catalogue[1:], rec.titles[1:], [{}] * 30, "catalogue"))
    np.testing.assert_allclose(again, stored, rtol=0, atol=1e-5)

    histories = [["i3", "i4"], ["i10"], ["i20", "i21", "i22"]]
    before = rec.scores(histories)
    added = rec.add_items([{"id": f"new-{i}", "title": f"Item number {i}"} for i in range(30)])
    assert added == [f"new-{i}" for i in range(30)] and len(rec.item_ids) == 61
    after = rec.scores(histories)
    np.testing.assert_allclose(after[:, :31], before, rtol=1e-5, atol=1e-5)  # the catalogue's scores stay
    originals = [rec.item_index(f"i{i}") for i in range(30)]
    np.testing.assert_allclose(after[:, 31:], before[:, originals], rtol=1e-5, atol=1e-5)  # a copy scores as its original
    # a history of copies reads as the history of their originals
    np.testing.assert_allclose(rec.scores([["new-3", "new-4"]]), rec.scores([["i3", "i4"]]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already in the catalogue"):
        rec.add_items([{"id": "i3", "title": "Item number 3"}])
    # the command takes a file of new items
    (tmp / "new.tsv").write_text("item_id\ttitle\nfresh\tItem number 39\n")
    assert recommend.main(["--run", str(tmp / "run"), "--new-items", str(tmp / "new.tsv"), "--history", "i3,fresh",
                           "-k", "31"]) == 0


def test_cold_items_added_after_training_score_as_in_the_report(llm_item_run):
    from jaxrec.seqrec.evaluate import COLD_GROUP

    run, tmp = llm_item_run
    run(tmp / "run", "data.cold_items=0.2", "evaluation.seeds=[0]")
    rec = jaxrec.Recommender.load(tmp / "run")
    cold = rec.data.cold
    catalogue = rec.data.num_items + 1
    rec.add_items([{"id": f"new-{rec.item_ids[c]}", "title": rec.titles[c]} for c in cold])
    history, targets, _ = evaluation_examples(rec.data, "test", rec.max_history)
    scores = rec.scores([[rec.item_ids[i] for i in row[row > 0]] for row in history])
    np.testing.assert_allclose(scores[:, catalogue:], scores[:, cold], rtol=1e-5, atol=1e-5)
    # rank the cold test targets among the catalogue with the added copies in place of the originals
    ranked = scores[:, :catalogue].copy()
    ranked[:, cold] = scores[:, catalogue:]
    is_cold = np.isin(targets, cold)
    target = ranked[np.arange(len(targets)), targets][:, None]
    higher, tied = (ranked > target).sum(1), (ranked == target).sum(1) - 1
    recall = np.clip(5 - higher, 0, tied + 1) / (tied + 1)
    report = json.loads((tmp / "run" / "test_metrics.json").read_text())["test"]["by_popularity"][COLD_GROUP]
    assert report["users"] == is_cold.sum() > 0
    assert recall[is_cold].mean() == pytest.approx(report["full"]["recall@5"], abs=1e-6)


def test_an_id_only_run_refuses_new_items(seqrec_run):  # noqa: F811
    run, tmp = seqrec_run
    run(tmp / "run", "loop.epochs=1", "evaluation.seeds=[0]")
    rec = jaxrec.Recommender.load(tmp / "run")
    from jaxrec.errors import RunError

    with pytest.raises(RunError, match="ID embeddings, which exist only for items it trained on"):
        rec.add_items([{"id": "x", "title": "Item number 1"}])
