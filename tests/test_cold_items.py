"""Held-out cold items (data.cold_items): no training input of any stage and
no validation target ever holds one; they are only ever test targets, and the
evaluation reports them as a group of their own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxrec.data.prep import PrepSpec, load_dataset
from jaxrec.methods.llm2rec.contrastive import Contrastive, ContrastiveConfig
from jaxrec.methods.llm2rec.csft import Csft, CsftConfig
from jaxrec.methods.llm2rec.mntp import Mntp, MntpConfig
from jaxrec.methods.llmemb.scft import Scft, ScftConfig
from jaxrec.models.lm import load_pretrained
from jaxrec.seqrec.histories import evaluation_examples, training_examples, training_user_items
from tests.conftest import build_torch_model, save_tokenizer

ITEMS, USERS = 60, 80


def _dataset(directory: Path) -> Path:
    """Items titled with one word each ("w<item>"), users with 4-12 random interactions."""
    rng = np.random.default_rng(0)
    directory.mkdir()
    (directory / "items.tsv").write_text("item_id\ttitle\n" + "".join(f"i{i}\tw{i}\n" for i in range(ITEMS)))
    rows = [f"u{u}\ti{item}\t{t}\n" for u in range(USERS)
            for t, item in enumerate(rng.choice(ITEMS, rng.integers(4, 13), replace=False))]
    (directory / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\n" + "".join(rows))
    return directory


@pytest.fixture(scope="module")
def cold_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cold")
    return load_dataset(_dataset(root / "data"), PrepSpec(k_core=0, cold_items=0.2, seed=3), cache=False), root


def test_cold_items_are_only_ever_test_targets(cold_data):
    data, _ = cold_data
    assert len(data.cold) == round(0.2 * data.num_items) and data.num_items == ITEMS
    assert data.report["cold_items"] == len(data.cold) and data.report["test_targets_cold"] > 0
    cold = set(data.cold.tolist())
    for u in range(data.num_users):
        seq = data.sequence(u).tolist()
        assert len(seq) >= 3 and not cold & set(seq[:-1])
    test_targets = {int(data.sequence(u)[-1]) for u in range(data.num_users)}
    assert test_targets & cold
    for kind in ("prefixes", "sequences", "chunks", "windows"):
        examples = training_examples(data, 5, kind)
        assert not cold & set(examples.history.ravel().tolist()) and not cold & set(examples.targets.ravel().tolist())
    for part in ("valid", "test"):
        history, targets, _ = evaluation_examples(data, part, 5)
        assert not cold & set(history.ravel().tolist())
    assert not cold & set(evaluation_examples(data, "valid", 5)[1].tolist())
    # training negatives: never a cold item
    draws = training_user_items(data).sample(np.random.default_rng(0), np.repeat(np.arange(data.num_users), 50), 1,
                                             distinct=False)
    assert not cold & set(draws.ravel().tolist())
    # the same data without the split keeps every interaction
    whole = load_dataset(_dataset_dir(cold_data), PrepSpec(k_core=0, seed=3), cache=False)
    assert len(whole.cold) == 0 and len(whole.items) > len(data.items)
    assert data.report["interactions_with_cold_items_held_out"] + data.report["test_targets_cold"] <= len(whole.items)


def _dataset_dir(cold_data) -> Path:
    return cold_data[1] / "data"


def test_no_lm_objective_trains_on_a_cold_item(cold_data):
    data, root = cold_data
    model_dir = root / "model"
    build_torch_model("llama-tied-gqa", vocab_size=3 + ITEMS + 2).save_pretrained(str(model_dir))
    save_tokenizer(model_dir, ["_", ","] + [f"w{i}" for i in range(ITEMS)])
    lm = load_pretrained(model_dir)
    title_of_token = {lm.tokenizer.convert_tokens_to_ids(f"w{i}"): data.titles[data.item_ids.tolist().index(f"i{i}")]
                      for i in range(ITEMS)}
    cold_titles = {data.titles[i] for i in data.cold}

    def titles_in(ids) -> set[str]:
        return {title_of_token[t] for t in np.asarray(ids).ravel().tolist() if t in title_of_token}

    rng = np.random.default_rng(0)
    for config_class, objective_class in ((MntpConfig, Mntp), (ContrastiveConfig, Contrastive)):
        objective = objective_class(config_class(), lm, data)
        assert objective.count == data.num_items - len(data.cold)
        seen = set().union(*(titles_in(objective.example(i, rng)) for i in range(objective.count)))
        assert not seen & cold_titles and len(seen) == objective.count
    scft = Scft(ScftConfig(), lm, data)
    texts = [text for i in range(scft.count) for text in scft.example(i, rng)]
    assert not {t.split("title is ")[1].split(";")[0].strip() for t in texts} & cold_titles
    csft = Csft(CsftConfig(), lm, data)
    seen = set()
    for i in range(csft.count):
        ids, _ = csft.example(i, rng)
        seen |= titles_in(ids)
    for ids, _ in csft.validation_examples():
        seen |= titles_in(ids)
    assert seen and not seen & cold_titles
