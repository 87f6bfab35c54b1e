"""A real 2-process JAX job on this machine (gloo collectives, 4 CPU devices
per process), the way TPU pods are tested here: Grain shards per process,
batches are assembled into global arrays, and the run matches one process
holding all 8 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


# data and fsdp across the processes; every axis inside each process; the tensor
# axis across the processes, the batch replicated on both (each reads all rows);
# packed rows, each process packing its devices' titles and agreeing on a row count;
# CSFT's target positions, gathered within each device's rows. Each mesh, objective
# and layout is in at least one case; no two cases test the same thing.
@pytest.mark.parametrize("mesh, objective, layout", [
    ("2,4,1", "mntp", "padded"), ("2,2,2", "mntp", "padded"),
    ("2,2,2", "contrastive", "packed"), ("1,1,8", "contrastive", "packed"),
    ("2,2,2", "csft", "padded"), ("2,4,1", "csft", "packed"),
])
def test_two_processes_match_one_process_with_all_devices(mesh, objective, layout):
    args = [mesh, objective, layout]
    port = _free_port()

    def start(process_id: int, processes: int, devices: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.multihost_script", str(process_id), str(processes), str(port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(devices),
        )

    # the one-process reference runs beside the two workers: each spends most of
    # its time compiling on one core, and the workers wait on each other
    processes = [start(0, 1, 8), start(0, 2, 4), start(1, 2, 4)]
    try:
        outputs = [p.communicate(timeout=400) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    one = json.loads(outputs[0][0].strip().splitlines()[-1])
    two = json.loads(outputs[1][0].strip().splitlines()[-1])
    assert two["processes"] == 2 and one["processes"] == 1
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert len(set(one["losses"])) == len(one["losses"]), "training should move the loss"
    # Adam divides by the gradient scale, so reduction-order noise of tiny
    # gradients shows up in absolute terms: 1e-5 absolute on weights of ~0.1.
    # CSFT's rows are laid out differently by two processes: left-padded rows a
    # process widens to the agreed length get the extra columns on the right,
    # and packed rows are padded to the agreed row count, a layout (and
    # summation order) the single process does not have. One weight in 512 then
    # moves 1.5e-5 (packed, with the layers recomputing all but their matmuls
    # in the backward) to 4e-5 (padded) differently.
    atol = 1e-4 if objective == "csft" else 1e-5
    for got, want in zip(two["trainable"], one["trainable"], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


def test_local_multihost_launcher_trains_with_one_writer_and_the_run_exports(tiny_checkpoints, tmp_path):
    model_dir, _ = tiny_checkpoints("llama-tied-gqa")
    data = write_tiny_dataset(tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"task: mntp\nrun_dir: {tmp_path / 'out'}\nmodel:\n  name: {model_dir}\ndata:\n  name: {data}\n  k_core: 1\n"
        "batch:\n  size: 8\n  max_length: 16\nloop:\n  steps: 2\n  log_every: 1\nmesh:\n  fsdp: 2\n"
    )
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / "local_multihost.sh"), str(config), "2", "4"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHON": sys.executable, "JAXREC_PROGRESS": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "over 8 device(s), 2 process(es)" in result.stderr
    assert result.stderr.count("[jaxrec mntp] done") == 1  # process 0 alone reports
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 2

    # the run the two processes trained exports to transformers with jaxrec's logits
    import jaxrec
    from jaxrec import export
    from tests.conftest import random_ids
    from tests.test_export import _torch_logits
    from transformers import AutoModelForCausalLM

    assert export.main(["--run", str(tmp_path / "out"), "--to", str(tmp_path / "hf")]) == 0
    ids = random_ids(2, 10)
    ours = np.asarray(jaxrec.load_lm(tmp_path / "out").logits(ids))
    assert np.abs(ours - np.asarray(jaxrec.load_lm(model_dir).logits(ids))).max() > 0  # trained away from the base
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    np.testing.assert_allclose(_torch_logits(model, ids), ours, atol=1e-4)


def _launch(config: Path, steps: int, processes: int, run_dir: Path) -> subprocess.CompletedProcess:
    settings = ["--set", f"loop.steps={steps}", "--set", f"run_dir={run_dir}"]
    env = {**os.environ, "PYTHON": sys.executable, "JAXREC_PROGRESS": "0"}
    if processes == 1:
        command = [sys.executable, "-m", "jaxrec.launch", "--config", str(config), *settings]
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    else:
        command = ["bash", str(ROOT / "launch" / "local_multihost.sh"), str(config), str(processes), "4", *settings]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_a_checkpoint_resumes_across_process_topologies(tiny_checkpoints, tmp_path):
    """Written by 2 processes x 4 devices, resumed by 1 process x 8 devices, and the other way round:
    the resumed steps equal those of an uninterrupted 8-device run."""
    model_dir, _ = tiny_checkpoints("llama-tied-gqa")
    data = write_tiny_dataset(tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(f"task: mntp\nmodel:\n  name: {model_dir}\ndata:\n  name: {data}\n  k_core: 1\n"
                      "batch:\n  size: 8\n  max_length: 16\nloop:\n  log_every: 1\nmesh:\n  fsdp: 2\n"
                      # a schedule that does not depend on loop.steps, which the resumed launch raises
                      "optimizer:\n  decay: constant\n  warmup_steps: 0\n")
    _launch(config, 4, 1, tmp_path / "whole")
    whole = _losses(tmp_path / "whole")
    for first, then in ((2, 1), (1, 2)):
        run_dir = tmp_path / f"{first}-then-{then}"
        _launch(config, 2, first, run_dir)
        _launch(config, 4, then, run_dir)
        assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == 2
        losses = _losses(run_dir)
        np.testing.assert_allclose([losses[s] for s in (1, 2, 3, 4)], [whole[s] for s in (1, 2, 3, 4)], rtol=1e-5)


def test_sigterm_to_one_process_stops_every_process_at_one_agreed_step(tiny_checkpoints, tmp_path):
    """SIGTERM reaches process 1 only: both processes stop at the next logging step, the checkpoint of that
    step is saved, the run is marked interrupted, and a relaunch resumes from it."""
    import signal
    import time

    model_dir, _ = tiny_checkpoints("llama-tied-gqa")
    data = write_tiny_dataset(tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(f"task: mntp\nmodel:\n  name: {model_dir}\ndata:\n  name: {data}\n  k_core: 1\n"
                      "batch:\n  size: 8\n  max_length: 16\nloop:\n  log_every: 3\n  save_every: 1000\nmesh:\n  fsdp: 2\n")
    run_dir = tmp_path / "out"
    job = subprocess.Popen(["bash", str(ROOT / "launch" / "local_multihost.sh"), str(config), "2", "4",
                            "--set", "loop.steps=600", "--set", f"run_dir={run_dir}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHON": sys.executable, "JAXREC_PROGRESS": "0"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.05)
    second = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True,
                                                 text=True).stdout.split()][1]
    os.kill(second, signal.SIGTERM)
    _, err = job.communicate(timeout=240)
    assert job.returncode == 128 + signal.SIGTERM, err[-3000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["status"] == "interrupted" and f"at step {steps[-1]}" in saved["error"]
    assert steps[-1] % 3 == 0 and steps[-1] < 600 and (run_dir / "checkpoints" / str(steps[-1])).is_dir()
    resumed = _launch(config, steps[-1] + 3, 2, run_dir)
    assert f"resumed from the checkpoint at step {steps[-1]}" in resumed.stderr
