"""Run directories that never lie: a changed config or another task never
writes over a run, one launch at a time, nothing finished is deleted, a write
failure ends the launch, a signal saves the current step, and a tampered
output makes its stage run again."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxrec import launch, runs
from jaxrec.errors import RunError
from jaxrec.registry import TASKS
from jaxrec.run_dir import LOCK_FILE, exclusive
from jaxrec.train.checkpoint import Checkpointer
from tests.conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAXREC_PROGRESS": "0"}


@pytest.fixture
def mntp(tiny_checkpoints, tmp_path):
    """(run_dir, launch arguments) of a 4-step LoRA MNTP run on a tiny model and dataset."""
    model_dir, _ = tiny_checkpoints("qwen2-tied")
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    settings = ["task=mntp", f"model.name={model_dir}", f"data.name={data}", f"run_dir={out}", "data.k_core=1",
                "batch.size=4", "batch.max_length=32", "loop.log_every=1", "loop.save_every=2", "loop.steps=4"]
    return out, [a for s in settings for a in ("--set", s)]


def _files(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in ("config.yaml", "manifest.json")}


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_a_changed_config_or_another_task_never_writes_over_a_run(mntp, capsys):
    out, args = mntp
    assert launch.main(args) == 0
    before = _files(out)
    with pytest.raises(RunError, match="is a mntp run, which tests no recommender"):
        runs.recommender_results(out)
    capsys.readouterr()
    for change, key in [("optimizer.learning_rate=0.01", "optimizer.learning_rate"),
                        ("trainable.lora_rank=2", "trainable.lora_rank")]:
        assert launch.main(args + ["--set", change]) == 1
        err = capsys.readouterr().err
        assert f"holds a finished mntp run made with another config (differing: {key}" in err and "--replace" in err
        assert err.count("\n") == 1  # one line, and nothing was loaded
        assert _files(out) == before
    # another task into the finished run's directory
    encode = ["--set", "task=encode"] + [a for pair in zip(args[::2], args[1::2]) if pair[1].startswith(
        ("model.", "data.", "run_dir")) for a in pair]
    assert launch.main(encode) == 1
    assert "holds a finished mntp run, and this launch's task is encode" in capsys.readouterr().err
    assert _files(out) == before
    # --dry-run says the same before anything would run
    assert launch.main(args + ["--set", "optimizer.learning_rate=0.01", "--dry-run"]) == 1
    assert _files(out) == before

    # a longer run resumes it, and the manifest says so
    assert launch.main(args + ["--set", "loop.steps=6"]) == 0
    manifest = _manifest(out)
    assert manifest["relaunched_with"][0]["changed"] == {"loop.steps": [4, 6]}
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 4

    # --replace keeps each replaced run as a new generation
    assert launch.main(args + ["--set", "optimizer.learning_rate=0.01", "--replace"]) == 0
    assert launch.main(args + ["--set", "trainable.lora_rank=2", "--replace"]) == 0
    first, second = (out.with_name(f"out.replaced-{n}") for n in (1, 2))
    assert _manifest(first)["config"]["loop"]["steps"] == 6 and _manifest(first)["status"] == "finished"
    assert _manifest(second)["config"]["optimizer"]["learning_rate"] == 0.01
    assert _manifest(out)["config"]["trainable"]["lora_rank"] == 2 and _manifest(out)["status"] == "finished"


def test_a_run_that_failed_before_its_first_checkpoint_takes_a_fixed_config(mntp, monkeypatch):
    out, args = mntp
    assert launch.main(args + ["--set", "batch.size=64"]) in (1, 2)  # fewer examples than one batch: fails in the task
    assert _manifest(out)["status"] == "failed"
    assert launch.main(args) == 0
    assert _manifest(out)["status"] == "finished"


def _wait_for(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _locked_by(directory: Path) -> str:
    lock = directory / LOCK_FILE
    return lock.read_text() if lock.is_file() else ""


def test_one_launch_at_a_time_per_run_directory(mntp, capsys):
    out, args = mntp
    first = subprocess.Popen([sys.executable, "-m", "jaxrec.launch", *args], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: f"pid {first.pid} " in _locked_by(out), "the first launch to take the lock")
        first.send_signal(signal.SIGSTOP)  # hold it mid-launch, whatever this machine's speed
        assert launch.main(args) == 1
        assert f"is in use by another launch (pid {first.pid} " in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert _manifest(out)["status"] == "finished"
    # a holder that died leaves no stale lock
    longer = args + ["--set", "loop.steps=400"]
    killed = subprocess.Popen([sys.executable, "-m", "jaxrec.launch", *longer], cwd=ROOT, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: f"pid {killed.pid} " in _locked_by(out), "the second launch to take the lock")
    killed.kill()
    killed.wait()
    assert launch.main(args + ["--set", "loop.steps=5"]) == 0


def test_a_pipeline_directory_takes_one_launch_at_a_time(mntp, tmp_path, capsys):
    _, args = mntp
    config = _pipeline(tmp_path, args)
    with exclusive(tmp_path / "pipe"):
        assert launch.main(["--config", str(config)]) == 1
    assert f"pipe is in use by another launch (pid {os.getpid()} " in capsys.readouterr().err
    assert not (tmp_path / "pipe" / "mntp").exists()


def _pipeline(tmp_path: Path, args: list[str]) -> Path:
    """A pipeline of the fixture's MNTP run, an encode of its LM and a SASRec on those vectors."""
    settings = dict(a.split("=", 1) for a in args[1::2])
    config = tmp_path / "pipeline.yaml"
    config.write_text(textwrap.dedent(f"""\
        run_dir: {tmp_path / 'pipe'}
        model: {{name: {settings['model.name']}}}
        data: {{name: {settings['data.name']}, k_core: 1}}
        stages:
          mntp:
            task: mntp
            batch: {{size: 4, max_length: 32}}
            loop: {{steps: 2, log_every: 1}}
          embed:
            task: encode
            model: {{init_from: mntp}}
          sasrec:
            task: seqrec
            recommender: {{items: {{kind: llm, embeddings: embed}},
                          backbone: {{hidden: 16, layers: 1, heads: 1, ffn: 16, max_history: 4}}}}
            batch: {{size: 4}}
            loop: {{epochs: 1}}
            evaluation: {{seeds: [0]}}
        """))
    return config


def test_a_failed_rerun_never_removes_the_finished_run(mntp, tmp_path, monkeypatch):
    _, args = mntp
    config = _pipeline(tmp_path, args)
    assert launch.main(["--config", str(config), "--stages", "mntp"]) == 0
    finished = tmp_path / "pipe" / "mntp"
    lm = (finished / "lm.safetensors").read_bytes()

    def broken(config, run, log):
        raise RuntimeError("the disk went away")

    monkeypatch.setitem(TASKS, "mntp", dataclasses.replace(TASKS["mntp"], run=broken))
    for steps in (3, 4):  # two reruns that fail: each earlier run is kept, the finished one above all
        assert launch.main(["--config", str(config), "--stages", "mntp", "--set", f"stages.mntp.loop.steps={steps}"]) == 1
    generations = sorted(p.name for p in finished.parent.glob("mntp.replaced-*"))
    assert generations == ["mntp.replaced-1", "mntp.replaced-2"]
    kept = finished.with_name("mntp.replaced-1")
    assert _manifest(kept)["status"] == "finished" and (kept / "lm.safetensors").read_bytes() == lm
    assert _manifest(finished.with_name("mntp.replaced-2"))["status"] == "failed"


def test_a_tampered_output_makes_its_stage_run_again(mntp, tmp_path, capsys):
    _, args = mntp
    config = _pipeline(tmp_path, args)
    assert launch.main(["--config", str(config)]) == 0
    embeddings = tmp_path / "pipe" / "embed" / "item_embeddings.npy"
    good = embeddings.read_bytes()
    np.save(embeddings, np.zeros_like(np.load(embeddings)))
    capsys.readouterr()
    assert launch.main(["--config", str(config), "--dry-run"]) == 0
    plan = capsys.readouterr().err
    assert "embed" in plan and "outputs changed since it finished (checksums differ): item_embeddings" in plan
    assert launch.main(["--config", str(config)]) == 0
    assert embeddings.read_bytes() == good  # encoded again, as it was
    stages = {s["name"]: s for s in json.loads((tmp_path / "pipe" / "pipeline.json").read_text())["stages"]}
    assert (stages["mntp"]["action"], stages["embed"]["action"], stages["sasrec"]["action"]) == ("skip", "rerun", "rerun")


FAILING_WRITES = """\
import errno, sys
import tensorboardX.record_writer as record_writer

def full(self, data):
    raise OSError(errno.ENOSPC, "No space left on device", self.path)

record_writer.RecordWriter.write = full
from jaxrec import launch
sys.exit(launch.main(sys.argv[1:]))
"""


def test_a_write_failure_ends_the_launch_and_a_relaunch_resumes(mntp):
    out, args = mntp
    started = time.monotonic()
    # tensorboardX's writer thread died on such an error and the loop then waited on it forever
    failed = subprocess.run([sys.executable, "-c", FAILING_WRITES, *args], cwd=ROOT, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: [Errno 28] No space left on device") and "tensorboard" in last
    assert _manifest(out)["status"] == "failed" and time.monotonic() - started < 300
    assert launch.main(args) == 0
    assert _manifest(out)["status"] == "finished"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_the_relaunch_ends_as_an_uninterrupted_run(mntp, tmp_path, signum):
    out, args = mntp
    args = args + ["--set", "loop.steps=200", "--set", "loop.save_every=1000"]
    straight = tmp_path / "straight"
    assert launch.main(args + ["--set", f"run_dir={straight}"]) == 0

    metrics = out / "metrics.jsonl"
    steps = lambda: [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    stopped = subprocess.Popen([sys.executable, "-m", "jaxrec.launch", *args], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(steps()) >= 3, "three training steps")
    stopped.send_signal(signal.SIGSTOP)  # so that the signal lands mid-run on a machine of any speed
    stopped.send_signal(signum)
    stopped.send_signal(signal.SIGCONT)
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode == 128 + signum, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"interrupted: stopped by {signal.Signals(signum).name} at step")
    assert "Traceback" not in err
    manifest = _manifest(out)
    assert manifest["status"] == "interrupted"
    saved = Checkpointer(out / "checkpoints").latest_step()
    assert saved == steps()[-1] and 3 <= saved < 200  # the step it was on, not a periodic save

    assert launch.main(args) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == saved
    resumed, uninterrupted = load_file(str(out / "lm.safetensors")), load_file(str(straight / "lm.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        np.testing.assert_allclose(resumed[key], uninterrupted[key], rtol=0, atol=1e-6, err_msg=key)
