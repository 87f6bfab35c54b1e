"""The seqrec task end to end on a synthetic dataset with a learnable order
(each user walks the catalogue item by item): training, early stopping on a
validation metric, test metrics with groups and shuffle diagnostics, seeds,
resume, and every item representation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxrec import launch, runs

NUM_ITEMS = 30


def write_successor_dataset(directory, users: int = 90, seed: int = 0):
    """User u starts at a random item and then always takes the next one (mod 30)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "items.tsv").write_text(
        "item_id\ttitle\tgenre\n" + "".join(f"i{i}\tItem number {i}\tg{i % 3}\n" for i in range(NUM_ITEMS))
    )
    rows = []
    for u in range(users):
        start, length = rng.integers(NUM_ITEMS), rng.integers(6, 14)
        rows += [(u, (start + k) % NUM_ITEMS, 1000 + k) for k in range(length)]
    (directory / "interactions.tsv").write_text(
        "user_id\titem_id\ttimestamp\n" + "".join(f"{u}\ti{i}\t{t}\n" for u, i, t in rows)
    )
    return directory


@pytest.fixture
def seqrec_run(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    data = write_successor_dataset(tmp_path / "data")

    def run(out, *overrides):
        args = [
            "--set", "task=seqrec", "--set", f"data.name={data}", "--set", "data.k_core=1", "--set", f"run_dir={out}",
            "--set", "recommender.backbone.hidden=32", "--set", "recommender.backbone.heads=2", "--set", "recommender.backbone.dropout=0.1",
            "--set", "recommender.backbone.max_history=6", "--set", "batch.size=32", "--set", "optimizer.learning_rate=0.01",
            "--set", "optimizer.decay=constant", "--set", "loop.eval_every=1", "--set", "loop.save_every=1",
            "--set", "loop.monitor=recall@5", "--set", "loop.monitor_mode=max", "--set", "loop.log_every=5",
            "--set", "evaluation.history_bins=[8]",
        ]
        for item in overrides:
            args += ["--set", item]
        assert launch.main(args) == 0
        return json.loads((out / "summary.json").read_text())

    return run, tmp_path


def test_sasrec_learns_the_order_and_reports_diagnostics(seqrec_run):
    run, tmp = seqrec_run
    summary = run(tmp / "sasrec", "loop.epochs=40", "evaluation.sampled_negatives=10")
    test = summary["per_seed"][0]["test"]
    assert test["full"]["recall@5"] > 0.8, test["full"]
    assert test["sampled"]["recall@5"] >= test["full"]["recall@5"] - 1e-6  # 10 negatives are easier than 29
    # permuting the history destroys the only signal there is
    assert test["shuffled"]["full"]["recall@5"] < test["full"]["recall@5"] - 0.2
    assert test["shuffled"]["cosine_to_original"] < 0.99
    groups = test["by_popularity"]
    assert {"popular", "tail"} <= set(groups) and sum(g["users"] for g in (groups["popular"], groups["tail"])) == 90
    assert sum(g["users"] for name, g in groups.items() if name.startswith("bin")) == 90
    assert set(test["by_history_length"]) <= {"<8", "≥8"}
    assert sum(g["users"] for g in test["by_history_length"].values()) == 90
    table = np.load(tmp / "sasrec" / "item_table.npy")
    assert table.shape == (NUM_ITEMS, 32)
    assert len(json.loads((tmp / "sasrec" / "item_ids.json").read_text())) == NUM_ITEMS
    rows = [json.loads(line) for line in (tmp / "sasrec" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["split"] == "validation" for r in rows) == summary["per_seed"][0]["training"]["epochs"]
    # the typed reader the report and the recommender API read runs with
    tested = runs.recommender_results(tmp / "sasrec")
    assert tested.seeds == summary["seeds"] and tested.protocols == ["full", "sampled"]
    assert tested.per_seed[0].metrics("sampled") == test["sampled"]
    assert tested.per_seed[0].groups("by_popularity") == groups and tested.per_seed[0].shuffled == test["shuffled"]


def test_early_stopping_tests_the_best_state_and_runs_resume(seqrec_run):
    run, tmp = seqrec_run
    # a learning rate of 1e-9 cannot improve validation after the first epoch
    first = run(tmp / "r", "loop.epochs=2", "optimizer.learning_rate=1e-9")["per_seed"][0]["training"]
    assert first["epochs"] == 2 and not first["stopped_early"]
    # relaunched longer and with patience (the only changes a run resumes with): one more stale epoch ends it
    again = run(tmp / "r", "loop.epochs=4", "loop.patience=1", "optimizer.learning_rate=1e-9")
    training = again["per_seed"][0]["training"]
    assert training["resumed_from"] == first["steps"]
    # the time is the whole run's, both processes
    assert training["timed_steps"] == training["steps"] and training["training_seconds"] > first["training_seconds"]
    # stopped after the stale epoch, the best state tested
    assert training["stopped_early"] and training["epochs"] == 3
    assert training["best_step"] <= first["steps"]


def test_seeds_give_mean_and_std(seqrec_run, capsys):
    run, tmp = seqrec_run
    summary = run(tmp / "s", "loop.epochs=2", "evaluation.seeds=[3,4]", "evaluation.shuffle=false")
    assert [r["seed"] for r in summary["per_seed"]] == [3, 4]
    values = [r["test"]["full"]["ndcg@10"] for r in summary["per_seed"]]
    stats = summary["over_seeds"]["full"]["ndcg@10"]
    assert stats["mean"] == pytest.approx(np.mean(values)) and stats["std"] == pytest.approx(np.std(values))
    assert (tmp / "s" / "seed-3" / "test_metrics.json").exists() and (tmp / "s" / "seed-4" / "best").is_dir()
    # the linear probe of frozen matrices against this run's ID vectors: a noisy copy of seed 3's own
    # vectors is predicted almost fully, another seed's partly, Gaussian noise not at all
    from jaxrec.bench.__main__ import main as bench

    ids = json.loads((tmp / "s" / "seed-3" / "item_ids.json").read_text())
    table = runs.item_table(tmp / "s", ["", *ids], 3)[1:]
    np.save(tmp / "copy.npy", table + 0.01 * table.std() * np.random.default_rng(0).normal(size=table.shape))
    (tmp / "item_ids.json").write_text(json.dumps(ids))
    assert bench(["probe", "--id-run", str(tmp / "s"), "--embeddings", str(tmp / "copy.npy"),
                  "--write-floor", str(tmp / "floor")]) == 0
    rows = {row["matrix"].split(" (")[0]: row for row in json.loads(capsys.readouterr().out.splitlines()[-1])["rows"]}
    assert rows[str(tmp / "copy.npy")]["id_vectors_r2"] > 0.95
    assert rows["Gaussian noise"]["id_vectors_r2"] < 0.1 < rows["ID vectors of seed 4"]["id_vectors_r2"] < 0.95
    floor = runs.item_embeddings(tmp / "floor" / "item_embeddings.npy", ["", *ids])[1:]  # an embeddings input
    copy = np.load(tmp / "copy.npy")
    assert floor.shape == copy.shape  # with the copy's mean row and mean distance from it
    np.testing.assert_allclose(floor.mean(0), copy.mean(0), atol=4 * copy.std() / np.sqrt(len(copy)))
    spread = lambda x: np.linalg.norm(x - x.mean(0), axis=1).mean()
    assert spread(floor) == pytest.approx(spread(copy), rel=0.05)


def _fake_encode_run(directory, dim=24, seed=0):
    directory.mkdir(parents=True)
    np.save(directory / "item_embeddings.npy", np.random.default_rng(seed).normal(size=(NUM_ITEMS, dim)).astype(np.float32))
    (directory / "item_ids.json").write_text(json.dumps([f"i{i}" for i in range(NUM_ITEMS)][::-1]))
    return directory


def test_llm_items_with_pca_adapter_and_rat_alignment(seqrec_run):
    run, tmp = seqrec_run
    run(tmp / "id", "loop.epochs=2", "recommender.loss=bce", "recommender.negatives=2")
    encoded = _fake_encode_run(tmp / "encode")
    summary = run(
        tmp / "rat", "loop.epochs=2", "recommender.items.kind=llm", f"recommender.items.embeddings={encoded}",
        "recommender.items.pca=12", "recommender.items.adapter=[16]", f"recommender.alignment.to={tmp / 'id'}",
        "recommender.alignment.max_items=16", "recommender.loss=bce",
    )
    assert np.isfinite(summary["per_seed"][0]["test"]["full"]["ndcg@10"])
    rows = [json.loads(line) for line in (tmp / "rat" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert all(np.isfinite(r["align_loss"]) and r["align_loss"] > 0 for r in train_rows)
    # total = next-item loss + 0.01 * alignment loss
    r = train_rows[-1]
    assert r["loss"] == pytest.approx(r["next_item_loss"] + 0.01 * r["align_loss"], rel=1e-5)


@pytest.mark.parametrize("model,combine", [("gru4rec", "concat"), ("bert4rec", "sum")])
def test_other_backbones_on_id_plus_llm_items(seqrec_run, model, combine):
    run, tmp = seqrec_run
    encoded = _fake_encode_run(tmp / "encode")
    summary = run(
        tmp / model, "loop.epochs=2", f"recommender.backbone.model={model}", "recommender.items.kind=id+llm",
        f"recommender.items.combine={combine}", f"recommender.items.embeddings={encoded}", "recommender.examples=sequences",
    )
    assert np.isfinite(summary["per_seed"][0]["test"]["full"]["recall@20"])
    assert np.load(tmp / model / "item_table.npy").shape == (NUM_ITEMS, 32)


def test_bad_embedding_inputs_are_clear_errors(seqrec_run, capsys):
    run, tmp = seqrec_run
    with pytest.raises(AssertionError):
        run(tmp / "x", "recommender.items.kind=llm", f"recommender.items.embeddings={tmp / 'nowhere'}")
    assert "nowhere" in capsys.readouterr().err
    encoded = _fake_encode_run(tmp / "short")
    ids = json.loads((encoded / "item_ids.json").read_text())
    (encoded / "item_ids.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(AssertionError):
        run(tmp / "y", "recommender.items.kind=llm", f"recommender.items.embeddings={encoded}")
    assert "lists 29 item ids" in capsys.readouterr().err


def test_cpu_devices_split_the_batch_in_a_fresh_launch(tmp_path):
    """mesh.cpu_devices applies only before JAX starts, so the launcher runs in
    its own process here; in this (already started) process it is refused."""
    import os
    import subprocess
    import sys

    from jaxrec.config import ConfigError
    from jaxrec.registry import load_config
    from jaxrec.train.mesh import MeshSpec, make_mesh

    with pytest.raises(ValueError, match="cpu_devices=3"):
        make_mesh(MeshSpec(cpu_devices=3))
    with pytest.raises(ConfigError, match="cpu_devices must be a positive count"):
        load_config(None, ["task=seqrec", "mesh.cpu_devices=0"])
    data = write_successor_dataset(tmp_path / "data", users=40)
    settings = [f"data.name={data}", "data.k_core=1", f"run_dir={tmp_path / 'run'}", "task=seqrec",
                "recommender.backbone.hidden=16", "recommender.backbone.max_history=6", "batch.size=32", "loop.epochs=1",
                "loop.eval_every=1", "loop.monitor=recall@5", "loop.monitor_mode=max", "evaluation.shuffle=false",
                "mesh.cpu_devices=2"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXREC_PROGRESS": "0"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-m", "jaxrec.launch", *[a for s in settings for a in ("--set", s)]],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "batches split over 2 cpu device(s)" in out.stderr
    assert (tmp_path / "run" / "summary.json").exists()


def test_align_targets_bench_counts_each_batchs_targets_and_what_a_cap_keeps(tmp_path, monkeypatch):
    """``python -m jaxrec.bench align-targets`` on a BERT4Rec stage with LLM items: the targets of
    an epoch of batches, drawn as the step draws its masks, and the share a cap on them aligns."""
    from jaxrec.bench.align_targets import run

    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    data, encoded = write_successor_dataset(tmp_path / "data"), _fake_encode_run(tmp_path / "embed")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"run_dir: {tmp_path / 'runs'}\ndata: {{name: {data}, k_core: 1}}\nbatch: {{size: 16}}\nstages:\n"
        "  rec:\n    task: seqrec\n"
        "    recommender: {backbone: {model: bert4rec, hidden: 8, max_history: 6},\n"
        f"                  items: {{kind: llm, embeddings: {encoded}}},\n"
        f"                  alignment: {{to: {tmp_path}, max_items: 1}}, examples: sequences}}\n")
    capped = run(str(pipeline), "rec", [], log=lambda *_: None)
    assert capped["batches"] == -(-2 * 90 // 16)  # each history twice: masked, and with only its last item masked
    assert 1 <= capped["targets_median"] <= capped["targets_max"] <= capped["positions_per_batch"] == 16 * 6
    assert capped["cap_binds_share"] == 1.0  # every batch holds more than one target
    assert capped["aligned_share"] == pytest.approx(1 / capped["targets_mean"], rel=0.01)
    roomy = run(str(pipeline), "rec", ["stages.rec.recommender.alignment.max_items=1000"], log=lambda *_: None)
    assert (roomy["cap_binds_share"], roomy["aligned_share"]) == (0.0, 1.0)
    assert roomy["targets_mean"] == capped["targets_mean"]  # the same seed draws the same masks


def test_seqrec_step_bench_times_a_stage_in_this_checkout_and_another(tmp_path, monkeypatch):
    """``python -m jaxrec.bench seqrec-step --tree DIR``: each checkout's step in its own process;
    the same code on both sides gives the same loss after the same steps."""
    from jaxrec.bench.seqrec_step import ROOT, run

    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    data = write_successor_dataset(tmp_path / "data")
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        f"run_dir: {tmp_path / 'runs'}\ndata: {{name: {data}, k_core: 1}}\nbatch: {{size: 16}}\nstages:\n"
        "  rec:\n    task: seqrec\n    recommender: {backbone: {model: sasrec, hidden: 8, max_history: 6}}\n")
    lines = []
    result = run(str(pipeline), "rec", steps=3, rounds=1, tree=str(ROOT), log=lines.append)
    assert set(result["ms_per_step"]) == {"this checkout", f"tree {ROOT}"}
    assert all(ms > 0 for ms in result["ms_per_step"].values()) and result["speedup"] > 0
    losses = {line.rsplit(" ", 1)[-1] for line in lines}
    assert len(lines) == 2 and len(losses) == 1, lines
