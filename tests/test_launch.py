"""``python -m jaxrec.launch``: the encode task end to end, its errors, and
the README's quickstart on the real default assets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxrec
from jaxrec import launch
from tests.conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
ITEMS = [("10", "toy story"), ("11", "star wars movie"), ("12", "space quest"), ("13", "call of duty game")]


@pytest.fixture
def tiny_run(tiny_checkpoints, tmp_path):
    model_dir, _ = tiny_checkpoints("qwen2-tied")
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.tsv").write_text("item_id\ttitle\n" + "".join(f"{i}\t{t}\n" for i, t in ITEMS))
    config = tmp_path / "run.yaml"
    config.write_text(f"task: encode\nmodel:\n  name: {model_dir}\ndata:\n  name: {data}\nencode:\n  batch_size: 3\n")
    return model_dir, data, config, tmp_path / "out"


def test_encode_task_writes_embeddings_and_id_map(tiny_run, capsys):
    model_dir, _, config, out = tiny_run
    assert launch.main(["--config", str(config), "--set", f"run_dir={out}"]) == 0
    embeddings = np.load(out / "item_embeddings.npy")
    assert json.loads((out / "item_ids.json").read_text()) == [i for i, _ in ITEMS]
    expected = jaxrec.load_lm(model_dir).encode([t for _, t in ITEMS], batch_size=3)
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 4 and summary["dim"] == 64
    assert "batch_size: 3" in (out / "config.yaml").read_text()


def test_encode_only_the_items_left_after_data_filtering(tiny_run):
    model_dir, data, config, out = tiny_run
    # items 10 and 12 have the only interactions, so only they survive k_core: 1 with 3-item users
    (data / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\n" + "".join(
        f"u{u}\t{i}\t{t}\n" for u in range(2) for t, i in enumerate(["10", "12", "10"])))
    assert launch.main(["--config", str(config), "--set", f"run_dir={out}", "--set", "encode.items=dataset",
                        "--set", "data.k_core=1"]) == 0
    assert json.loads((out / "item_ids.json").read_text()) == ["10", "12"]
    expected = jaxrec.load_lm(model_dir).encode(["toy story", "space quest"], batch_size=3)
    np.testing.assert_allclose(np.load(out / "item_embeddings.npy"), expected, atol=1e-6)


def test_recbole_item_file_is_read(tiny_run):
    _, data, config, out = tiny_run
    (data / "items.tsv").unlink()
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    lines += [f"{i}\t{t}\t1995\tAction Comedy" for i, t in ITEMS]
    (data / "films.item").write_text("\n".join(lines) + "\n")
    assert launch.main(["--config", str(config), "--set", f"run_dir={out}"]) == 0
    assert np.load(out / "item_embeddings.npy").shape == (4, 64)


def test_config_typo_exits_2_naming_the_key(tiny_run, capsys):
    _, _, config, _ = tiny_run
    assert launch.main(["--config", str(config), "--set", "encode.batch_sise=8"]) == 2
    err = capsys.readouterr().err
    assert "encode.batch_sise" in err and "did you mean 'batch_size'" in err


def test_missing_data_is_a_clear_error(tiny_run, capsys):
    _, _, config, out = tiny_run
    assert launch.main(["--config", str(config), "--set", f"run_dir={out}", "--set", "data.name=/no/such/dir"]) == 2
    assert "data.name: /no/such/dir does not exist" in capsys.readouterr().err
    assert not out.exists()  # checked before the run directory is made


def test_help_lists_tasks(capsys):
    with pytest.raises(SystemExit) as info:
        launch.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "encode" in out and "--set" in out and "JAXREC_CACHE" in out


def test_print_config_shows_overrides(capsys):
    assert launch.main(["--config", str(ROOT / "configs/quickstart.yaml"), "--set", "stages.embed.encode.batch_size=16",
                        "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out.count("batch_size: 16") == 1 and "# stage sasrec_llm2rec" in out


def test_set_typo_names_the_override_not_the_file(capsys):
    assert launch.main(["--config", str(ROOT / "configs/csft_smollm2.yaml"), "--set", "bacth.size=3"]) == 2
    err = capsys.readouterr().err
    assert "--set bacth.size=3: unknown key 'bacth'" in err and "csft_smollm2.yaml" not in err


def test_quickstart_untrained_embeddings_on_the_real_defaults(smollm2_gguf, ml100k_dir, tmp_path):
    """The README's main job's first stage that needs no training, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "jaxrec.launch", "--config", str(ROOT / "configs/quickstart.yaml"),
         "--set", f"run_dir={tmp_path}", "--stages", "embed_untrained"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "JAXREC_PROGRESS": "0"},
    )
    assert result.returncode == 0, result.stderr
    embeddings = np.load(tmp_path / "embed_untrained" / "item_embeddings.npy")
    ids = json.loads((tmp_path / "embed_untrained" / "item_ids.json").read_text())
    assert embeddings.shape == (1682, 576) and len(ids) == 1682 and ids[0] == "1"
    assert np.isfinite(embeddings).all()
    cosine = embeddings @ embeddings.T / np.outer(*(2 * [np.linalg.norm(embeddings, axis=1)]))
    assert cosine[0, 1:].max() < 0.9999  # titles get distinct vectors


def _training_setup(tiny_run, task):
    model_dir, data, _, out = tiny_run
    write_tiny_dataset(data)
    return [
        "--set", f"task={task}", "--set", f"model.name={model_dir}", "--set", f"data.name={data}",
        "--set", f"run_dir={out}", "--set", "batch.size=4", "--set", "batch.max_length=32",
        "--set", "loop.log_every=1", "--set", "loop.save_every=2", "--set", "model.attention_dropout=0.1",
        "--set", "batch.eval_batches=1", "--set", "loop.eval_every=2", "--set", "data.k_core=1",
    ]


@pytest.mark.parametrize("task", ["csft", "mntp", "contrastive", "scft"])
def test_training_task_runs_and_resumes(tiny_run, task):
    args = _training_setup(tiny_run, task)
    out = tiny_run[3]
    assert launch.main(args + ["--set", "loop.steps=2"]) == 0
    assert launch.main(args + ["--set", "loop.steps=4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert any(r["split"] == "validation" for r in rows)


def test_contrastive_dropout_views_need_dropout(tiny_run, capsys):
    args = _training_setup(tiny_run, "contrastive")
    assert launch.main(args + ["--set", "model.attention_dropout=0.0", "--set", "loop.steps=1"]) == 2
    assert "model.attention_dropout" in capsys.readouterr().err


@pytest.mark.parametrize("task, size", [("csft", 4), ("mntp", 8), ("contrastive", 8)])
def test_packed_batches_train(tiny_run, task, size):
    args = _training_setup(tiny_run, task) + ["--set", "batch.pack=true", "--set", f"batch.size={size}"]
    assert launch.main(args + ["--set", "loop.steps=3"]) == 0
    rows = [json.loads(line) for line in (tiny_run[3] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_validation_smaller_than_one_batch_is_refused_before_training(tiny_run, capsys):
    args = _training_setup(tiny_run, "csft")  # 6 users: 6 validation examples
    assert launch.main(args + ["--set", "batch.size=8", "--set", "loop.steps=2"]) == 2
    err = capsys.readouterr().err
    assert "6 validation examples do not fill one batch of batch.size=8" in err and "loop.eval_every=0" in err
    assert launch.main(args + ["--set", "batch.size=8", "--set", "loop.steps=2", "--set", "loop.eval_every=0"]) == 0


def test_packing_is_refused_where_it_does_not_apply(tiny_run, capsys):
    args = _training_setup(tiny_run, "scft")
    assert launch.main(args + ["--set", "batch.pack=true", "--set", "loop.steps=1"]) == 2
    assert "batch.pack works for the csft, mntp, contrastive tasks" in capsys.readouterr().err
