"""The training loop: exact resume after SIGKILL, the non-finite-loss guard,
early stopping, metrics files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.batches import GrainBatches
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.checkpoint import Checkpointer, ResumeError
from jaxrec.train.engine import Engine
from jaxrec.train.hooks import TrainingDiverged
from jaxrec.train.loop import LoopSpec, mean_over_batches, train
from jaxrec.train.optim import OptimizerSpec, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def _run(model_dir, run_dir, steps, kill_at=None):
    args = [sys.executable, "-m", "tests.resume_script", str(model_dir), str(run_dir), str(steps)]
    if kill_at is not None:
        args.append(str(kill_at))
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "JAXREC_PROGRESS": "0"})


def test_sigkilled_run_resumes_to_the_same_parameters(tiny_checkpoints, tmp_path):
    model_dir, _ = tiny_checkpoints("llama-tied-gqa")
    straight = _run(model_dir, tmp_path / "straight", 10)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = _run(model_dir, tmp_path / "resumed", 10, kill_at=7)
    assert killed.returncode == -9, killed.stderr[-3000:]
    saved = Checkpointer(tmp_path / "resumed" / "checkpoints").latest_step()
    assert saved in (4, 6)  # the step-6 save may still have been in flight when killed
    resumed = _run(model_dir, tmp_path / "resumed", 10)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from the checkpoint" in resumed.stdout

    consumed = json.loads((tmp_path / "resumed" / "consumed.jsonl").read_text().splitlines()[-1])
    assert consumed == list(range(saved, 10))  # the batches the uninterrupted run used for those steps
    # metrics.jsonl holds each step once, with the uninterrupted run's losses
    rows = lambda d: [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows("resumed")] == [r["step"] for r in rows("straight")] == list(range(1, 11))
    np.testing.assert_allclose([r["loss"] for r in rows("resumed")], [r["loss"] for r in rows("straight")], atol=1e-6)
    a, b = np.load(tmp_path / "straight" / "final.npz"), np.load(tmp_path / "resumed" / "final.npz")
    assert sorted(a.files) == sorted(b.files)
    for key in a.files:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=key)


def _toy_engine(lr=0.1):
    """A one-parameter-vector 'model' whose loss is (w . x)^2."""
    mesh = mesh_lib.make_mesh(mesh_lib.MeshSpec(data=1), jax.devices()[:1])
    loss = lambda variables, _, batch, rng: (jnp.mean((batch["x"] @ variables["params"]["w"]) ** 2), {})
    variables = {"params": {"w": jnp.ones(3)}}
    return Engine(None, variables, (lambda r: {}, loss), ("^params/",), make_optimizer(OptimizerSpec(lr, clip_norm=None), 100), mesh)


class _PoisonAt(GrainBatches):
    """Hands out a NaN batch as batch number ``nan_at``."""

    def __init__(self, *args, nan_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.nan_at = nan_at

    def __next__(self):
        position = self.get_state()["next_index"]
        batch = super().__next__()
        return {"x": np.full_like(batch["x"], np.nan)} if position == self.nan_at else batch


def _toy_data(values, nan_at=None):
    return _PoisonAt(len(values), 1, lambda i, rng: values[i], lambda rows: {"x": np.stack(rows)}, nan_at=nan_at)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    engine = _toy_engine()
    with pytest.raises(TrainingDiverged, match=r"step 6.*Last good checkpoint: step 4"):
        train(engine, _toy_data(values, nan_at=5), LoopSpec(steps=10, log_every=1, save_every=2), tmp_path, {"m": 1})
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert checkpoints.latest_step() == 4
    state, _ = checkpoints.restore(_toy_engine().state, {"m": 1})
    assert np.isfinite(np.asarray(state.trainable["model"]["params"]["w"])).all()
    checkpoints.close()


def test_a_fraction_of_an_epoch_checkpoints_within_the_epoch(tmp_path):
    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)  # 16 steps per epoch
    train(_toy_engine(), _toy_data(values), LoopSpec(epochs=1, save_every=0.25, keep_checkpoints=8), tmp_path, {"m": 1})
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    assert list(checkpoints.manager.all_steps()) == [4, 8, 12, 16]
    checkpoints.close()
    assert LoopSpec(epochs=3, save_every=2.0).save_every == 2
    with pytest.raises(ValueError, match="save_every counts steps when epochs is not set"):
        LoopSpec(steps=10, save_every=2.5)


def test_resume_refuses_another_base(tmp_path):
    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    train(_toy_engine(), _toy_data(values), LoopSpec(steps=2, save_every=2), tmp_path, {"model": "a", "sha256": "1"})
    with pytest.raises(ResumeError, match="was made for"):
        train(_toy_engine(), _toy_data(values), LoopSpec(steps=4, save_every=2), tmp_path, {"model": "b", "sha256": "2"})


def test_a_checkpoint_without_time_totals_times_only_the_resumed_steps(tmp_path):
    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    engine, data = _toy_engine(), _toy_data(values)
    for _ in range(2):
        engine.train_step(next(data))
    legacy_loop_state = {"best": None, "best_step": None, "stale": 0, "best_metrics": None}
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.save(engine.state, data.get_state(), {"m": 1}, legacy_loop_state)
    checkpoints.close()
    summary = train(_toy_engine(), _toy_data(values), LoopSpec(steps=5, save_every=0), tmp_path, {"m": 1})
    assert summary["resumed_from"] == 2 and summary["timed_steps"] == 3 and summary["training_seconds"] > 0

def test_early_stopping_and_metrics_files(tmp_path):
    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    engine = _toy_engine(lr=1e-12)  # float32 weights cannot move: validation never improves
    held_out = [{"x": values[:4]}]
    summary = train(
        engine, _toy_data(values), LoopSpec(steps=50, log_every=5, save_every=0, eval_every=5, patience=2),
        tmp_path, {"m": 1}, validate=mean_over_batches(engine, lambda: held_out),
    )
    assert summary["stopped_early"] and summary["steps"] < 50
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "validation"}
    assert all("loss" in r and "tokens_per_s" in r for r in rows if r["split"] == "train")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "validation/loss"} <= set(events.Tags()["scalars"])
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == summary["steps"]
    assert summary["timed_steps"] == summary["steps"] and summary["training_seconds"] > 0

    # launched again, the finished run trains nothing more and reports the first run's figures
    logged = []
    relaunched = _toy_engine(lr=1e-12)
    again = train(
        relaunched, _toy_data(values), LoopSpec(steps=50, log_every=5, save_every=0, eval_every=5, patience=2),
        tmp_path, {"m": 1}, validate=mean_over_batches(relaunched, lambda: held_out), log=logged.append,
    )
    assert any("already stopped early" in line for line in logged)
    assert {k: again[k] for k in ("steps", "stopped_early", "best_step", "training_seconds", "timed_steps")} == {
        k: summary[k] for k in ("steps", "stopped_early", "best_step", "training_seconds", "timed_steps")}
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(rows)


def test_gradient_accumulation_equals_one_large_batch():
    """Two accumulated half batches make the same update as the full batch."""
    values = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshSpec(data=1), jax.devices()[:1])
    loss = lambda variables, _, batch, rng: (jnp.mean((batch["x"] @ variables["params"]["w"] - 1.0) ** 2), {})

    def engine(accumulate):
        spec = OptimizerSpec(0.05, clip_norm=None, decay="constant", accumulate_steps=accumulate)
        return Engine(None, {"params": {"w": jnp.ones(3)}}, (lambda r: {}, loss), ("^params/",), make_optimizer(spec, 10), mesh)

    full, halves = engine(1), engine(2)
    full.train_step({"x": values})
    halves.train_step({"x": values[:2]})
    np.testing.assert_array_equal(np.asarray(halves.state.trainable["model"]["params"]["w"]), np.ones(3))
    halves.train_step({"x": values[2:]})
    np.testing.assert_allclose(
        np.asarray(halves.state.trainable["model"]["params"]["w"]),
        np.asarray(full.state.trainable["model"]["params"]["w"]), rtol=1e-6,
    )


def _damage(step_dir: Path, how: str) -> None:
    if how == "truncated arrays":
        for file in step_dir.glob("state/**/d/*"):
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif how == "empty metadata":
        (step_dir / "extra" / "metadata").write_text("")
    else:
        (step_dir / "state" / "_METADATA").unlink()


@pytest.mark.parametrize("how", ["truncated arrays", "empty metadata", "missing metadata"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, how):
    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    straight = _toy_engine()
    train(straight, _toy_data(values), LoopSpec(steps=10, log_every=1, save_every=2), tmp_path / "straight", {"m": 1})
    run = tmp_path / "damaged"
    train(_toy_engine(), _toy_data(values), LoopSpec(steps=6, log_every=1, save_every=2), run, {"m": 1})
    _damage(run / "checkpoints" / "6", how)
    logged, resumed = [], _toy_engine()
    summary = train(resumed, _toy_data(values), LoopSpec(steps=10, log_every=1, save_every=2), run, {"m": 1},
                    log=logged.append)
    assert summary["resumed_from"] == 4
    warning = next(line for line in logged if "is corrupt" in line)
    assert str(run / "checkpoints" / "6") in warning and (run / "corrupt-checkpoints-6").is_dir()
    np.testing.assert_allclose(np.asarray(resumed.state.trainable["model"]["params"]["w"]),
                               np.asarray(straight.state.trainable["model"]["params"]["w"]), rtol=1e-6)
    # the metrics hold each step once, as the uninterrupted run's do
    rows = lambda d: [(r["step"], r["split"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert [r[:2] for r in rows(run)] == [r[:2] for r in rows(tmp_path / "straight")]
    np.testing.assert_allclose([r[2] for r in rows(run)], [r[2] for r in rows(tmp_path / "straight")], rtol=1e-6)


def test_no_intact_checkpoint_is_a_short_error_naming_the_cause(tmp_path):
    from jaxrec.train.checkpoint import CorruptCheckpoints

    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    train(_toy_engine(), _toy_data(values), LoopSpec(steps=4, save_every=2), tmp_path, {"m": 1})
    for step in (2, 4):
        _damage(tmp_path / "checkpoints" / str(step), "truncated arrays")
    with pytest.raises(CorruptCheckpoints) as info:
        train(_toy_engine(), _toy_data(values), LoopSpec(steps=6, save_every=2), tmp_path, {"m": 1}, log=lambda m: None)
    message = str(info.value)
    assert "no intact checkpoint" in message
    assert f"{tmp_path / 'checkpoints' / '4'}: " in message and f"{tmp_path / 'checkpoints' / '2'}: " in message
    assert len(message) < 1500 and message.count("\n") == 0


def test_an_attached_hook_sees_every_step_and_its_early_stop_is_checkpointed(tmp_path):
    from jaxrec.train.hooks import Hook

    class StopAtThree(Hook):
        def __init__(self):
            self.seen, self.closed = [], False

        def after_step(self, run):
            self.seen.append((run.step, float(run.metrics["loss"])))
            if run.step == 3:
                run.stop_early()
            return "three" if run.step == 3 else None

        def close(self):
            self.closed = True

    values = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    hook = StopAtThree()
    summary = train(_toy_engine(), _toy_data(values), LoopSpec(steps=10, save_every=0), tmp_path, {"m": 1},
                    hooks=[hook])
    assert [step for step, _ in hook.seen] == [1, 2, 3] and hook.closed
    assert all(np.isfinite(loss) for _, loss in hook.seen)
    assert summary["steps"] == 3 and summary["stopped_early"]
    assert Checkpointer(tmp_path / "checkpoints").latest_step() == 3
