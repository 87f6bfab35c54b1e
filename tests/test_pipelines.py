"""Pipelines: the shipped LLM2Rec quickstart end to end on a tiny random model
and a slice of real data (Amazon Video Games), with skip, resume after a kill,
and rerun of a changed stage and what reads it; the config rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jaxrec import launch, runs
from jaxrec.errors import ConfigError
from jaxrec.pipelines.config import load_pipeline
from jaxrec.seqrec.spec import flat_names
from jaxrec.pipelines.plan import make_plan
from tests.conftest import build_torch_model, save_tokenizer

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
GAMES = ROOT.parent / "shared" / "data" / "amazon2018_video_games"
STAGES = ["csft", "mntp", "contrastive", "embed_untrained", "embed", "sasrec_id", "sasrec_untrained", "sasrec_llm2rec",
          "sasrec_id_llm2rec"]


def real_slice(dataset: Path, root: Path, users: int) -> tuple[Path, Path]:
    """The first ``users`` users of a shared dataset with their items and
    titles, and a tiny random LLaMA whose word-level vocabulary covers those titles."""
    if not dataset.exists():
        pytest.skip(f"{dataset} is not present (the shared datasets live beside the repository)")
    lines = (dataset / "interactions.tsv").read_text().splitlines()
    kept, rows = [], []
    for line in lines[1:]:
        user = line.split("\t")[0]
        if user not in kept:
            if len(kept) == users:
                break
            kept.append(user)
        rows.append(line)
    items = {row.split("\t")[1] for row in rows}
    titles = [line for line in (dataset / "items.tsv").read_text().splitlines()[1:] if line.split("\t")[0] in items]
    data = root / "data"
    data.mkdir()
    (data / "interactions.tsv").write_text("\n".join([lines[0], *rows]) + "\n")
    (data / "items.tsv").write_text("item_id\ttitle\n" + "\n".join(titles) + "\n")

    words = Counter(w for t in titles for w in re.findall(r"\w+|[^\w\s]+", t.split("\t", 1)[1]))
    vocab = ["_"] + [w for w, _ in words.most_common(200) if w != "_"]
    model_dir = root / "model"
    build_torch_model("llama-tied-gqa", vocab_size=3 + len(vocab)).save_pretrained(str(model_dir))
    save_tokenizer(model_dir, vocab)
    return data, model_dir


@pytest.fixture(scope="module")
def games_slice(tmp_path_factory):
    """The first 40 users of Amazon Video Games and a tiny LLaMA for their titles."""
    return real_slice(GAMES, tmp_path_factory.mktemp("games"), 40)


def _quickstart_args(run_dir: Path, data: Path, model_dir: Path) -> list[str]:
    settings = [f"run_dir={run_dir}", f"model.name={model_dir}", f"data.name={data}", "data.k_core=1",
                "loop.log_every=1", "trainable.lora_rank=4",
                "stages.csft.batch.size=4", "stages.csft.batch.max_length=64", "stages.csft.loop.steps=3",
                "stages.csft.loop.save_every=1"]
    for stage in ("mntp", "contrastive"):
        settings += [f"stages.{stage}.batch.size=8", f"stages.{stage}.loop.steps=3", f"stages.{stage}.loop.save_every=1"]
    for stage in ("embed", "embed_untrained"):
        settings.append(f"stages.{stage}.encode.batch_size=16")
    for stage in ("sasrec_id", "sasrec_untrained", "sasrec_llm2rec", "sasrec_id_llm2rec"):
        settings += [f"stages.{stage}.loop.epochs=2", f"stages.{stage}.evaluation.seeds=[0, 1]",
                     f"stages.{stage}.batch.size=16", f"stages.{stage}.recommender.backbone.hidden=32"]
    return ["--config", str(QUICKSTART)] + [a for s in settings for a in ("--set", s)]


def _actions(run_dir: Path) -> dict[str, str]:
    return {s["name"]: s["action"] for s in json.loads((run_dir / "pipeline.json").read_text())["stages"]}


def _started(run_dir: Path) -> dict[str, str]:
    return {s: runs.read_manifest(run_dir / s)["started"] for s in STAGES}


def _results(run_dir: Path) -> dict:
    return {r["label"]: r["metrics"] for r in json.loads((run_dir / "results.json").read_text())["rows"]}


def test_quickstart_pipeline_runs_skips_resumes_and_reruns_what_changed(games_slice, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXREC_PROGRESS", "0")
    data, model_dir = games_slice
    first = tmp_path / "first"
    args = _quickstart_args(first, data, model_dir)

    # 1. end to end: every stage finished with intact outputs, the report written
    assert launch.main(args) == 0
    for stage in STAGES:
        run = runs.open_run(first / stage)
        for name in run.manifest["outputs"]:
            assert run.file(name).is_file()
    assert runs.read_manifest(first / "mntp")["chain"][0]["task"] == "csft"
    assert runs.read_manifest(first / "sasrec_llm2rec")["inputs"]["recommender.items.embeddings"]["run"] == \
        str((first / "embed").absolute())
    trained = np.load(first / "embed" / "item_embeddings.npy")
    untrained = np.load(first / "embed_untrained" / "item_embeddings.npy")
    assert trained.shape == untrained.shape and np.abs(trained - untrained).max() > 1e-4
    table = _results(first)
    assert list(table) == ["SASRec, ID only", "SASRec on untrained SmolLM2 (bidirectional, mean)",
                           "SASRec on LLM2Rec embeddings", "SASRec on ID + LLM2Rec embeddings"]
    for metrics in table.values():
        assert set(metrics) == {"recall@10", "ndcg@10", "recall@20", "ndcg@20"}
        assert all(0.0 <= m["mean"] <= 1.0 and m["std"] >= 0.0 for m in metrics.values())
    report = (first / "results.md").read_text()
    assert "| SASRec, ID only | " in report and "mean ± std over 2 seeds" in report
    # the settings every row shares are stated once, and what differs per row
    assert "Every row trained and tested with: " in report and "recommender.backbone.hidden 32" in report
    assert "- SASRec on LLM2Rec embeddings: recommender.items.conditioning standardize, recommender.items.embeddings embed, "\
           "recommender.items.kind llm" in report
    slices = json.loads((first / "results.json").read_text())["rows"][0]["slices"]
    assert set(slices) == {"held-out cold items", "tail"} and "overall Recall@10 | overall NDCG@10" in report
    probe = json.loads((first / "results.json").read_text())["probe"]  # the LLM rows' matrices, a floor, a ceiling
    assert [r["label"] for r in probe["rows"]] == [
        "SASRec on untrained SmolLM2 (bidirectional, mean)", "SASRec on LLM2Rec embeddings",
        "SASRec on ID + LLM2Rec embeddings", "Gaussian noise, 64 wide (the floor)",
        "SASRec, ID only: the ID vectors of seed 1 (the ceiling)"]
    assert probe["rows"][1] == {**probe["rows"][2], "label": probe["rows"][1]["label"]}  # one matrix, probed once
    assert all(-1.0 < r["id_vectors_r2"] < 1.0 and -1.0 < r["log_count_r2"] < 1.0 for r in probe["rows"])
    assert "### What the frozen item vectors hold (linear probe)" in report
    for png in ("training_curves.png", "metrics.png", "slices.png"):
        assert (first / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SASRec on LLM2Rec embeddings" in capsys.readouterr().err  # the table is printed

    # 2. launched again: every stage is skipped, nothing is touched
    started = _started(first)
    assert launch.main(args) == 0
    assert set(_actions(first).values()) == {"skip"} and _started(first) == started

    # 2b. a run written before an option existed (now at its default), its input read from where the
    # project was cloned before: both still current
    csft = runs.read_manifest(first / "csft")
    del csft["config"]["data"]["sample_items"]
    csft["config_hash"] = runs.config_hash(csft["config"])
    mntp = runs.read_manifest(first / "mntp")
    mntp["inputs"]["model.init_from"].update(run="/elsewhere/csft", config_hash=csft["config_hash"])
    for stage, manifest in (("csft", csft), ("mntp", mntp)):
        (first / stage / "manifest.json").write_text(json.dumps(manifest))
    # ... and a recommender stored with the flat section of jaxrec before it had sections
    sasrec = runs.read_manifest(first / "sasrec_llm2rec")
    sasrec["config"]["recommender"] = flat_names(sasrec["config"]["recommender"])
    sasrec["config_hash"] = runs.config_hash(sasrec["config"])
    sasrec["inputs"]["recommender.embeddings"] = sasrec["inputs"].pop("recommender.items.embeddings")
    for name, output in sasrec["outputs"].items():
        if name.endswith("recommender"):
            output["spec"] = flat_names(output["spec"])
    (first / "sasrec_llm2rec" / "manifest.json").write_text(json.dumps(sasrec))
    assert runs.trained_recommender(first / "sasrec_llm2rec" / "seed-1").spec.items.embeddings.endswith("embed")
    capsys.readouterr()
    assert launch.main(args + ["--dry-run"]) == 0
    assert re.search(r"csft\s+csft\s+skip", (plan := capsys.readouterr().err)) and re.search(r"mntp\s+mntp\s+skip", plan)
    assert re.search(r"sasrec_llm2rec\s+seqrec\s+skip", plan)
    csft["config"]["data"]["sample_items"] = 5  # a value the run did not have is a change
    (first / "csft" / "manifest.json").write_text(json.dumps(csft))
    assert launch.main(args + ["--dry-run"]) == 0
    assert re.search(r"csft\s+csft\s+rerun\s+config changed: data.sample_items", capsys.readouterr().err)
    del csft["config"]["data"]["sample_items"]
    (first / "csft" / "manifest.json").write_text(json.dumps(csft))

    # 3. killed inside a stage, relaunched: that stage resumes, the results equal the uninterrupted run's
    second = tmp_path / "second"
    killed = subprocess.run([sys.executable, "-m", "tests.pipeline_kill_script", "mntp", "2", "--",
                             *_quickstart_args(second, data, model_dir)],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAXREC_PROGRESS": "0"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert runs.read_manifest(second / "mntp")["status"] == "running"
    assert launch.main(_quickstart_args(second, data, model_dir) + ["--dry-run"]) == 0
    assert re.search(r"mntp\s+mntp\s+resume", capsys.readouterr().err)
    assert launch.main(_quickstart_args(second, data, model_dir)) == 0
    actions = _actions(second)
    assert actions["csft"] == "skip" and actions["mntp"] == "resume"
    assert json.loads((second / "mntp" / "summary.json").read_text())["resumed_from"] in (1, 2)
    np.testing.assert_allclose(np.load(second / "embed" / "item_embeddings.npy"), trained, atol=1e-5)
    for label, metrics in _results(second).items():
        for name, value in metrics.items():
            assert value["mean"] == pytest.approx(table[label][name]["mean"], abs=1e-5), (label, name)

    # 4. one stage's setting changed: it and the stages that read it (directly or not) run again, no other
    changed = args + ["--set", "stages.mntp.loop.steps=4"]
    assert launch.main(changed + ["--dry-run"]) == 0
    plan = capsys.readouterr().err
    assert re.search(r"mntp\s+mntp\s+rerun\s+config changed: loop.steps", plan)
    assert launch.main(changed) == 0
    assert _actions(first) == {"csft": "skip", "mntp": "rerun", "contrastive": "rerun", "embed_untrained": "skip",
                               "embed": "rerun", "sasrec_id": "skip", "sasrec_untrained": "skip",
                               "sasrec_llm2rec": "rerun", "sasrec_id_llm2rec": "rerun"}
    now = _started(first)
    assert {s for s in STAGES if now[s] != started[s]} == {"mntp", "contrastive", "embed", "sasrec_llm2rec",
                                                           "sasrec_id_llm2rec"}
    assert json.loads((first / "mntp" / "summary.json").read_text())["steps"] == 4
    assert (first / "mntp.replaced-1" / "manifest.json").is_file()  # the previous run is kept aside


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_pipeline_config_errors_name_the_stage_and_the_fix(tmp_path):
    later = _write(tmp_path / "later.yaml", "stages:\n  embed: {task: encode, model: {init_from: train}}\n"
                                             "  train: {task: mntp}\n")
    with pytest.raises(ConfigError, match="stage 'train' comes later"):
        load_pipeline(later)
    unused = _write(tmp_path / "unused.yaml", "recommender: {backbone: {hidden: 8}}\nstages:\n  embed: {task: encode}\n")
    with pytest.raises(ConfigError, match="shared section 'recommender' is used by none"):
        load_pipeline(unused)
    no_task = _write(tmp_path / "no_task.yaml", "stages:\n  embed: {encode: {batch_size: 2}}\n")
    with pytest.raises(ConfigError, match="stages.embed: task is not set"):
        load_pipeline(no_task)
    wrong_key = _write(tmp_path / "wrong.yaml", "stages:\n  embed: {task: encode, encode: {batch_sise: 2}}\n")
    with pytest.raises(ConfigError, match=r"stages.embed: unknown key 'encode.batch_sise'"):
        load_pipeline(wrong_key)  # every stage's config is validated as the pipeline loads
    top_task = _write(tmp_path / "top_task.yaml", "task: encode\nstages:\n  embed: {task: encode}\n")
    with pytest.raises(ConfigError, match="a pipeline has no top-level task"):
        load_pipeline(top_task)
    with pytest.raises(ConfigError, match="--stages: no stage nope"):
        make_plan(load_pipeline(QUICKSTART), ["nope"])


def test_stages_subset_needs_its_inputs_up_to_date(tmp_path):
    pipeline = load_pipeline(QUICKSTART, [f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="stage embed reads contrastive, which must run first; add contrastive"):
        make_plan(pipeline, ["embed"])
    plan = make_plan(pipeline, ["csft", "embed_untrained"])
    assert [p.name for p in plan if p.selected] == ["csft", "embed_untrained"]


def test_included_stages_run_in_their_own_pipeline_directory(tmp_path):
    base = _write(tmp_path / "base.yaml", f"run_dir: {tmp_path / 'base'}\ndata: {{name: one}}\n"
                                          "stages:\n  train: {task: mntp}\n")
    other = _write(tmp_path / "other.yaml", f"include: [base.yaml]\nrun_dir: {tmp_path / 'other'}\n"
                                            "data: {name: two}\nstages:\n  train: {loop: {steps: 7}}\n"
                                            "  embed: {task: encode, model: {init_from: train}}\n")
    pipeline = load_pipeline(other)
    train, embed = pipeline.stages["train"], pipeline.stages["embed"]
    assert train.run_dir == tmp_path / "base" / "train" and embed.run_dir == tmp_path / "other" / "embed"
    assert train.tree["data"] == {"name": "one"} and train.tree["loop"] == {"steps": 7}
    assert embed.tree["data"] == {"name": "two"}
    assert embed.resolved_tree(pipeline.stages)["model"]["init_from"] == str(tmp_path / "base" / "train")
    assert base.exists()


def test_a_typo_in_a_stage_name_is_found_before_any_work(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"--set stages.mntpp.loop.steps=3: .*quickstart.yaml has no stage 'mntpp' "
                                          r"\(did you mean 'mntp'\?\); its stages: contrastive, csft"):
        load_pipeline(QUICKSTART, ["stages.mntpp.loop.steps=3"])
    with pytest.raises(ConfigError, match=r"stages.mntp: model.init_from: 'cfst' is neither a stage of this pipeline "
                                          r"\(did you mean 'csft'\?\) nor an existing run directory or file"):
        load_pipeline(QUICKSTART, ["stages.mntp.model.init_from=cfst"])
    # --dry-run finds them too, before anything runs
    assert launch.main(["--config", str(QUICKSTART), "--set", "stages.mntp.model.init_from=cfst", "--dry-run"]) == 2
    assert "did you mean 'csft'" in capsys.readouterr().err
    (tmp_path / "elsewhere").mkdir()  # an existing directory is taken as a run directory, as before
    pipeline = load_pipeline(QUICKSTART, [f"stages.mntp.model.init_from={tmp_path / 'elsewhere'}"])
    assert "model.init_from" not in pipeline.stages["mntp"].needs


def test_training_curves_mark_a_stage_that_logged_once():
    """A stage with one logged loss (an LLM-SRec stage of a few steps) draws
    a visible point, not an empty panel; longer series stay plain lines."""
    from jaxrec.pipelines.report import training_curves_figure

    once = {"": [{"split": "train", "step": 4, "loss": 3.7}]}
    many = {"": [{"split": "train", "step": s, "loss": 1.0 / s} for s in range(1, 6)]
                + [{"split": "validation", "step": s, "recall@20": 0.1 * s} for s in (2, 4)]}
    figure = training_curves_figure({"short": once, "long": many})
    short, long = figure.axes[0], figure.axes[1]
    assert short.get_title() == "short" and long.get_title() == "long"
    assert [line.get_marker() for line in short.lines] == ["o"]
    assert long.lines[0].get_marker() in ("None", None, "")
    validation = next(ax for ax in figure.axes[2:] if ax.lines)  # the twin axis of "long"
    assert validation.lines[0].get_marker() == "o"  # two validations
    assert training_curves_figure({"encode": {"": [{"split": "test", "step": 0}]}}) is None
