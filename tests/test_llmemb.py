"""LLMEmb's pieces as the authors' code has them: SCFT views drawn once per
item with attributes dropped, BCE training negatives never among the user's
items, and RAT's alignment over the items at the batch's target positions."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import launch, runs
from jaxrec.data.item_text import attribute_text, item_attributes
from jaxrec.methods.llmemb.scft import Scft, ScftConfig, attribute_view
from jaxrec.objectives.similarity import soft_clip_loss
from tests.test_objectives import _soft_clip_numpy
from tests.test_pipelines import ROOT, real_slice
from tests.test_seqrec import _toy_data

BEAUTY = ROOT.parent / "shared" / "data" / "amazon2014_beauty"

ATTRIBUTES = {"brand": "Acme", "category": ["Skin", "Face"], "price": "12.5", "size": "50 ml", "scent": "none"}


def _scft_objective(views: str, items: int = 3):
    fake_lm = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0, eos_token_id=0), config=SimpleNamespace(pad_token_id=0))
    data = SimpleNamespace(titles=[""] + [f"Cream {i}" for i in range(items)], attributes=[{}] + [ATTRIBUTES] * items,
                           warm_items=lambda: np.arange(1, items + 1))
    config = ScftConfig(seed=5)
    config.batch.domain, config.batch.attribute_drop, config.scft.views = "beauty", 0.4, views
    return Scft(config, fake_lm, data)


def test_attribute_prompt_and_views():
    items = item_attributes(["Cream"], [ATTRIBUTES])
    assert list(items[0]) == ["title", *ATTRIBUTES]  # the title first
    text = attribute_text(items[0], "beauty")
    assert text == ("The beauty item has the following attributes:\n"
                    "title is Cream; brand is Acme; category is Skin, Face; price is 12.5; size is 50 ml; scent is none")
    assert attribute_text({"description": "x" * 300}, "beauty").endswith("description is " + "x" * 100)
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(50):
        view = attribute_view(items[0], rng, 0.4)
        assert len(view) == 4  # 6 attributes, floor(40%) = 2 dropped
        assert all(view[k] == items[0][k] for k in view)
        orders.add(tuple(view))
    assert len(orders) > 10  # shuffled and dropped independently
    assert attribute_view({"title": "only"}, rng, 0.4) == {"title": "only"}  # at least one attribute stays
    four = dict(list(items[0].items())[:4])  # 40% of 4 = 1.6: the authors drop floor(1.6) = 1, rounding would drop 2
    assert len(attribute_view(four, rng, 0.4)) == 3 and len(attribute_view(four, rng, 0.4, "round")) == 2


def test_scft_views_are_drawn_once_per_item():
    fixed = _scft_objective("fixed")
    first = [fixed.example(i, np.random.default_rng(100 + i)) for i in range(3)]
    again = [fixed.example(i, np.random.default_rng(999)) for i in range(3)]  # another epoch's generator
    assert first == again
    assert all(a != b for a, b in first)  # two different views of each item
    assert all(text.startswith("The beauty item has the following attributes:\n") for pair in first for text in pair)
    per_epoch = _scft_objective("per_epoch")
    drawn = {per_epoch.example(0, np.random.default_rng(seed)) for seed in range(20)}
    assert len(drawn) > 1


class _WordTokenizer:
    """Word ids from 10 on; BOS 1 only with add_special_tokens (as LLaMA's tokenizer), EOS 2."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __init__(self):
        self.words: dict[str, int] = {}

    def __call__(self, texts, add_special_tokens=True, truncation=False, max_length=None):
        rows = []
        for text in texts:
            row = ([1] if add_special_tokens else []) + [self.words.setdefault(w, 10 + len(self.words)) for w in text.split()]
            rows.append(row[:max_length] if truncation else row)
        return {"input_ids": rows}


@pytest.mark.parametrize("special_tokens", ["eos", "bos"])
def test_scft_prompts_end_in_eos_without_bos_as_the_authors(special_tokens):
    objective = _scft_objective("fixed")
    objective.tok = _WordTokenizer()
    objective.config.scft.special_tokens = special_tokens
    batch = objective.collate([objective.example(i, np.random.default_rng(0)) for i in range(3)])
    for view in ("view_a", "view_b"):
        ids, mask = batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"]
        last = ids[np.arange(len(ids)), mask.sum(axis=1) - 1]
        if special_tokens == "eos":  # the authors': no BOS, EOS last (inside the mask, so it is pooled)
            assert (ids[:, 0] != 1).all() and (last == 2).all()
        else:
            assert (ids[:, 0] == 1).all() and (last != 2).all()


def test_bce_negatives_are_never_the_users_training_items():
    """As the authors' code: training negatives avoid the user's training items only. Avoiding its
    validation and test items as well would let training read the held-out interactions."""
    from jaxrec.tasks.seqrec import SeqrecConfig, _Setup

    data = _toy_data()  # user a: items 1-4 train, 5 validation, 6 test (of 13 items)
    config = SeqrecConfig()
    config.recommender.loss, config.recommender.negatives, config.recommender.backbone.max_history = "bce", 3, 3
    config.recommender.examples = "chunks"
    setup = _Setup(config, data)
    drawn_by_a = set()
    for step in range(30):
        indices = np.arange(setup.count)
        batch = setup.batch(indices, np.random.default_rng(step))
        assert batch["negatives"].shape == (*batch["history"].shape, 3)
        for user, negatives, targets in zip(setup.examples.users[indices], batch["negatives"], batch["targets"]):
            assert not set(negatives.ravel().tolist()) & set(data.sequence(user)[:-2].tolist())
            scored = negatives[targets > 0]  # a real item at every scored position, padding elsewhere
            assert scored.min() >= 1 and scored.max() <= data.num_items and not negatives[targets == 0].any()
            if user == 0:
                drawn_by_a |= set(negatives.ravel().tolist())
    assert {5, 6} <= drawn_by_a  # the held-out items are ordinary negatives
    config.recommender.examples = "prefixes"  # one target per row: its negatives at its position, nowhere else
    batch = _Setup(config, data).batch(np.arange(4), np.random.default_rng(0))
    assert (batch["negatives"][batch["targets"] > 0] >= 1).all() and not batch["negatives"][batch["targets"] == 0].any()
    assert ((batch["negatives"] > 0).sum(axis=(1, 2)) == 3).all()  # one position's 3 negatives per row


def test_bert4rec_examples_come_twice_with_the_last_item_copies():
    from jaxrec.tasks.seqrec import SeqrecConfig, _Setup

    config = SeqrecConfig()
    config.recommender.backbone.model, config.recommender.backbone.max_history = "bert4rec", 4
    config.recommender.examples = "sequences"
    setup = _Setup(config, _toy_data())
    n = len(setup.examples)
    mask_last = setup.batch(np.arange(setup.count), np.random.default_rng(0))["mask_last"]
    assert len(mask_last) == 2 * n and mask_last[n:].all() and not mask_last[:n].any()
    batch = setup.batch(np.array([0, n]), np.random.default_rng(0))
    np.testing.assert_array_equal(batch["history"][0], batch["history"][1])
    assert batch["mask_last"].tolist() == [False, True]


@pytest.mark.parametrize("limit", [None, 64, 5])
def test_rat_alignment_covers_the_batchs_target_items(limit):
    from jaxrec.seqrec.recommender import Recommender, init_variables
    from jaxrec.seqrec.spec import AlignmentSpec, BackboneSpec, ItemsSpec, RecommenderSpec

    rng = np.random.default_rng(0)
    llm, aligned = rng.normal(size=(11, 6)).astype(np.float32), rng.normal(size=(11, 4)).astype(np.float32)
    llm[0] = aligned[0] = 0
    spec = RecommenderSpec(backbone=BackboneSpec(hidden=4, max_history=5),
                           items=ItemsSpec(kind="llm", embeddings="x"),
                           alignment=AlignmentSpec(to="y", max_items=limit))
    model = Recommender(spec, 10, llm_dim=6, align_dim=4)
    variables = init_variables(model, jax.random.key(0), llm, aligned)
    adapted = np.asarray(model.apply(variables, method=Recommender.adapted_llm_items))
    targets = np.array([[3, 7, 0, 0, 0], [2, 3, 9, 1, 0]], np.int32)  # 6 target positions, padding elsewhere
    loss = float(model.apply(variables, jnp.asarray(targets), jax.random.key(1), method=Recommender.alignment_loss))
    real = targets[targets > 0]
    if limit is None or limit >= len(real):  # every target position, duplicates included, and nothing else
        np.testing.assert_allclose(loss, _soft_clip_numpy(adapted[real], aligned[real], 2.0), rtol=1e-5)
    else:  # a subset of the target positions: one of the 6-choose-5 losses
        candidates = [_soft_clip_numpy(adapted[np.delete(real, i)], aligned[np.delete(real, i)], 2.0) for i in range(6)]
        assert min(abs(loss - c) for c in candidates) < 1e-4 * abs(loss)
    # raw vectors by default: not the loss of the normalised ones
    normalised = float(soft_clip_loss(jnp.asarray(adapted[real]), jnp.asarray(aligned[real]), 2.0, normalize=True))
    assert abs(normalised - _soft_clip_numpy(adapted[real], aligned[real], 2.0)) > 1e-3


def _same_loss_and_gradients(model, variables, batch, narrowed):
    """The recommender objective's loss, its parts and every gradient on ``batch``
    and on ``narrowed`` (the same batch with a field that narrows the work) agree."""
    from jaxrec.seqrec.recommender import make_objective

    _, loss = make_objective(model)
    params, constants = variables["params"], variables["constants"]
    grad = jax.jit(jax.value_and_grad(lambda p, b: loss({"params": p, "constants": constants}, {}, b,
                                                      jax.random.key(3)), has_aux=True))
    (whole, whole_parts), whole_grads = grad(params, batch)
    (part, part_parts), part_grads = grad(params, narrowed)
    np.testing.assert_allclose(float(part), float(whole), rtol=1e-5)
    for name in whole_parts:
        np.testing.assert_allclose(float(part_parts[name]), float(whole_parts[name]), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
                 part_grads, whole_grads)
    return whole_parts


@pytest.mark.parametrize("loss_kind, cap", [("softmax", None), ("bce", None), ("softmax", 64)])
def test_rat_over_every_target_scores_the_batchs_real_targets_only_with_the_same_loss(loss_kind, cap):
    """align_items: null aligns every target position, as the authors' code: with
    align_slots the step scores a bound on the batch's real targets instead of
    every position, padding included, and its loss and gradients are the same
    (and the same under a cap the batch does not reach)."""
    from jaxrec.seqrec.recommender import Recommender, align_slots, init_variables, item_slots
    from jaxrec.seqrec.spec import AlignmentSpec, BackboneSpec, ItemsSpec, RecommenderSpec

    rng = np.random.default_rng(1)
    num_items, length, users = 200, 16, 6
    llm = rng.normal(size=(num_items + 1, 12)).astype(np.float32)
    aligned = rng.normal(size=(num_items + 1, 8)).astype(np.float32)
    llm[0] = aligned[0] = 0
    spec = RecommenderSpec(backbone=BackboneSpec(hidden=8, max_history=length, dropout=0.3),
                           items=ItemsSpec(kind="llm", embeddings="x", adapter=[10]),
                           alignment=AlignmentSpec(to="y", max_items=cap),
                           examples="sequences",
                           loss=loss_kind,
                           negatives=2)
    model = Recommender(spec, num_items, llm_dim=12, align_dim=8)
    variables = init_variables(model, jax.random.key(0), llm, aligned)
    lengths = np.array([16, 3, 5, 1, 9, 2])
    history = np.where(np.arange(length) < lengths[:, None], rng.integers(1, num_items + 1, (users, length)), 0)
    targets = np.where(history > 0, rng.integers(1, num_items + 1, history.shape), 0).astype(np.int32)
    batch = {"history": history.astype(np.int32), "targets": targets}
    if loss_kind == "bce":
        batch["negatives"] = np.where(targets[..., None] > 0, rng.integers(1, num_items + 1, (users, length, 2)),
                                      0).astype(np.int32)
        batch["item_slots"] = item_slots(batch, num_items)
    slots = align_slots(batch)
    assert np.count_nonzero(targets) <= slots.size < targets.size  # 36 real targets of 96 positions
    every_parts = _same_loss_and_gradients(model, variables, batch, {**batch, "align_slots": slots})
    assert float(every_parts["align_loss"]) > 0


@pytest.mark.parametrize("items, align", [("llm", True), ("id+llm", False)])
def test_bce_step_on_the_batchs_items_equals_the_whole_catalogue(items, align):
    """Scoring only the batch's items (item_slots) gives the loss and gradients of
    the whole table: the adapter's other rows never reach a BCE loss."""
    from jaxrec.seqrec.recommender import Recommender, init_variables, item_slots
    from jaxrec.seqrec.spec import AlignmentSpec, BackboneSpec, ItemsSpec, RecommenderSpec

    rng = np.random.default_rng(0)
    num_items, length = 300, 6
    llm = rng.normal(size=(num_items + 1, 12)).astype(np.float32)
    aligned = rng.normal(size=(num_items + 1, 8)).astype(np.float32)
    llm[0] = aligned[0] = 0
    spec = RecommenderSpec(backbone=BackboneSpec(hidden=8, max_history=length, dropout=0.3),
                           items=ItemsSpec(kind=items, combine="concat", embeddings="x", adapter=[10]),
                           alignment=AlignmentSpec(to="y" if align else None, max_items=7),
                           examples="sequences",
                           loss="bce",
                           negatives=2)
    model = Recommender(spec, num_items, llm_dim=12, align_dim=8 if align else 0)
    variables = init_variables(model, jax.random.key(0), llm, aligned if align else None)
    history = rng.integers(1, num_items + 1, size=(4, length)).astype(np.int32)
    history[1, 3:] = 0  # a shorter history: right padding
    targets = np.where(history > 0, rng.integers(1, num_items + 1, size=history.shape), 0).astype(np.int32)
    batch = {"history": history, "targets": targets,
             "negatives": rng.integers(1, num_items + 1, size=(4, length, 2)).astype(np.int32)}
    slots = item_slots(batch, num_items)
    assert slots is not None and len(np.unique(np.concatenate([a.ravel() for a in batch.values()]))) + 1 <= slots.size < num_items
    _same_loss_and_gradients(model, variables, batch, {**batch, "item_slots": slots})
    assert item_slots(batch, 20) is None  # a bound as large as the catalogue: the whole table is used


QUICK = ROOT / "configs" / "llmemb" / "quick_beauty.yaml"


@pytest.fixture(scope="module")
def beauty_slice(tmp_path_factory):
    """The first 60 users of Amazon Beauty and a tiny LLaMA for their titles."""
    return real_slice(BEAUTY, tmp_path_factory.mktemp("beauty"), 60)


def test_llmemb_pipeline_end_to_end_with_its_long_tail_report(beauty_slice, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    data, model_dir = beauty_slice
    run_dir = tmp_path / "llmemb"
    settings = [f"run_dir={run_dir}", f"model.name={model_dir}", f"data.name={data}", "data.k_core=1",
                "trainable.lora_rank=4", "stages.scft.batch.size=8", "stages.scft.batch.max_length=48",
                "stages.scft.loop.steps=3", "stages.scft.loop.save_every=1", "stages.embed.encode.max_length=48",
                "stages.llmemb.recommender.items.pca=16", "stages.llmemb.recommender.items.adapter=[24]"]
    for stage in ("sasrec_id", "llmemb"):
        settings += [f"stages.{stage}.loop.epochs=2", f"stages.{stage}.batch.size=16",
                     f"stages.{stage}.recommender.backbone.hidden=32", f"stages.{stage}.recommender.backbone.max_history=20",
                     f"stages.{stage}.evaluation.seeds=[0, 1]",
                     # 60 users: few items have many interactions
                     f"stages.{stage}.evaluation.tail_threshold=1", f"stages.{stage}.evaluation.popularity_edges=[1, 2]"]
    assert launch.main(["--config", str(QUICK)] + [a for s in settings for a in ("--set", s)]) == 0

    for stage in ("scft", "embed", "sasrec_id", "llmemb"):
        run = runs.open_run(run_dir / stage)
        for name in run.manifest["outputs"]:
            assert run.file(name).is_file()
    scft_rows = [json.loads(line) for line in (run_dir / "scft" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in scft_rows if r["split"] == "train")
    embeddings = np.load(run_dir / "embed" / "item_embeddings.npy")
    assert embeddings.shape[0] == len(json.loads((run_dir / "embed" / "item_ids.json").read_text()))
    llmemb_rows = [json.loads(line) for line in (run_dir / "llmemb" / "seed-0" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["align_loss"] > 0 for r in llmemb_rows if r["split"] == "train")

    results = json.loads((run_dir / "results.json").read_text())
    assert results["protocol"] == "sampled" and [r["label"] for r in results["rows"]] == ["SASRec, ID only", "LLMEmb (SASRec)"]
    for row in results["rows"]:
        assert set(row["metrics"]) == {"recall@10", "ndcg@10"} and len(row["seeds"]) == 2
        popularity = row["groups"]["by_popularity"]
        assert {"popular", "tail"} <= set(popularity)
        assert popularity["popular"]["users"] + popularity["tail"]["users"] == 60
        counts = [g for g in popularity if g.endswith("interactions")]
        assert counts and sum(popularity[g]["users"] for g in counts) == 60
        for group in popularity.values():
            assert {"full", "sampled"} <= set(group)
            assert all(0 <= v["mean"] <= 1 for protocol in ("full", "sampled") for v in group[protocol].values())
        assert sum(g["users"] for g in row["groups"]["by_history_length"].values()) == 60
        # 1 + 100 candidates are easier than the whole catalogue
        assert row["metrics"]["recall@10"]["mean"] >= json.loads(
            (Path(row["run_dir"]) / "summary.json").read_text())["over_seeds"]["full"]["recall@10"]["mean"] - 1e-6
    report = (run_dir / "results.md").read_text()
    assert "| LLMEmb (SASRec) | " in report and "HR@10" in report
    assert "### by popularity" in report and "### by history length" in report
    for png in ("training_curves.png", "metrics.png", "groups.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
