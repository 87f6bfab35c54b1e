"""Running a task in its run directory (:func:`run_task`), and who may write
a run directory, and with what.

- **One launch at a time:** a launch holds an exclusive lock on its run
  directory (and a pipeline on its own directory) until it ends. The lock is
  an OS file lock, so a holder that died leaves nothing stale behind; a
  refusal names the holder's pid. In a multi-process job, process 0 takes it.
- **Only the run it holds:** a launch into a directory that holds another
  task's run, or the same task's run with a changed config, is refused before
  anything is loaded, naming the differing keys; the directory is left byte
  for byte. (A run that ended before its first checkpoint holds nothing to
  mislabel, and starts again with the new config.) Only a longer run (``loop.steps``, ``loop.epochs``,
  ``loop.patience``) resumes a run with a changed config, and its manifest
  records the change. ``--replace`` moves the old run aside instead.
- **Nothing finished is deleted:** a replaced run is kept as
  ``<dir>.replaced-<n>``, a new number each time.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxrec import runs
from jaxrec.config import to_dict, to_yaml
from jaxrec.inputs import value_at
from jaxrec.errors import ConfigError, DataError
from jaxrec.registry import TASKS, build_config
from jaxrec.tasks.specs import TaskConfig, check_inputs

LOCK_FILE = ".lock"
EXTENDING_KEYS = frozenset({"loop.steps", "loop.epochs", "loop.patience"})
"""Config keys a relaunch may change and still resume the run: they only say how long it trains."""


class RunDirConflict(DataError):
    """The run directory holds a run this launch must not write over, or another launch holds it."""


# -- the same run? ------------------------------------------------------------


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (``run_dir`` aside)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b and key != "run_dir":
            keys.append(f"{prefix}{key}")
    return keys


def _stored_config_as_now(stored: dict) -> dict | None:
    """A run's stored config read by today's config classes: options added since
    it ran take their defaults. None when it no longer reads (a key was removed)."""
    try:
        return to_dict(build_config(stored, stored=True))
    except (ConfigError, TypeError, ValueError):
        return None


def same_config(config_dict: dict, manifest: dict) -> bool:
    """Whether ``manifest``'s run was made with this config (a run from before
    an option existed still is, when the option is at its default)."""
    if manifest.get("config_hash") == runs.config_hash(config_dict):
        return True
    stored = _stored_config_as_now(manifest.get("config") or {})
    return stored is not None and runs.config_hash(stored) == runs.config_hash(config_dict)


def _stored_tree(manifest: dict) -> dict:
    """The run's stored config as today's classes read it (as stored, where it no longer reads)."""
    stored = manifest.get("config") or {}
    return _stored_config_as_now(stored) or stored


def config_changes(config_dict: dict, manifest: dict) -> list[str]:
    """The keys that differ from the stored run's config (read as today's classes read it)."""
    if same_config(config_dict, manifest):
        return []
    return changed_keys(_stored_tree(manifest), config_dict) or ["(the config hash differs)"]


def _leaf(tree: dict, dotted: str):
    return value_at(tree, tuple(dotted.split(".")))


def check_relaunch(config_dict: dict, task: str, run_dir: Path) -> list[dict]:
    """Refuse a launch that would write over another run in ``run_dir``.
    Returns the manifest's ``relaunched_with`` record to keep (with this
    launch's change added when it only makes the run longer)."""
    manifest = runs.read_manifest(run_dir)
    if manifest is None:
        return []
    status = manifest.get("status")
    ways_out = (f"launch it into another run_dir, or add --replace to keep the old run as "
                f"{next_generation(run_dir).name} and start anew")
    if manifest.get("task") != task:
        raise RunDirConflict(f"{run_dir} holds a {status} {manifest.get('task')} run, and this launch's task is "
                             f"{task}: {ways_out}")
    history = list(manifest.get("relaunched_with") or [])
    changed = config_changes(config_dict, manifest)
    if not changed or (status != "finished" and not holds_training_state(run_dir)):
        return history  # the same run, or one that ended before it made anything a changed config could mislabel
    if set(changed) <= EXTENDING_KEYS:
        stored = _stored_tree(manifest)
        history.append({"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        "changed": {k: [_leaf(stored, k), _leaf(config_dict, k)] for k in changed}})
        return history
    stored = _stored_tree(manifest)
    shown = ", ".join(f"{k} ({_leaf(stored, k)!r} -> {_leaf(config_dict, k)!r})"
                      for k in changed[:8]) + (" ..." if len(changed) > 8 else "")
    raise RunDirConflict(f"{run_dir} holds a {status} {task} run made with another config (differing: {shown}); "
                         f"only {', '.join(sorted(EXTENDING_KEYS))} may change to resume it: {ways_out}")


def holds_training_state(run_dir: Path) -> bool:
    """Whether a run saved any checkpoint (of any seed): what a resume would continue from."""
    return any(step.name.isdigit() for kind in ("checkpoints", "best")
               for step in [*run_dir.glob(f"{kind}/*"), *run_dir.glob(f"seed-*/{kind}/*")])


# -- generations --------------------------------------------------------------


def next_generation(run_dir: Path) -> Path:
    """``<dir>.replaced-<n>`` with the next unused n."""
    taken = [int(p.name.rsplit("-", 1)[1]) for p in run_dir.parent.glob(f"{run_dir.name}.replaced-*")
             if p.name.rsplit("-", 1)[1].isdigit()]
    return run_dir.with_name(f"{run_dir.name}.replaced-{max(taken, default=0) + 1}")


def _rename_aside(run_dir: Path, lock: bool) -> Path:
    import jax

    target = next_generation(run_dir)
    if jax.process_index() == 0:
        with _file_lock(run_dir) if lock else contextlib.nullcontext():
            run_dir.rename(target)
    _sync(f"moved aside {run_dir}")
    return target


def move_aside(run_dir: Path) -> Path:
    """Keep a run that is replaced as the next ``<dir>.replaced-<n>`` (never
    deleting an earlier one); process 0 moves it, under the directory's lock."""
    return _rename_aside(Path(run_dir), lock=True)


@contextlib.contextmanager
def claimed(run_dir: str | Path, config_dict: dict, task: str, replace: bool = False,
            log=print) -> Iterator[list[dict]]:
    """Hold ``run_dir`` for a launch of ``task`` with this config, after
    :func:`check_relaunch`; with ``replace``, a run it refuses is moved aside
    first. Yields the manifest's ``relaunched_with`` record."""
    run_dir = Path(run_dir)
    with exclusive(run_dir):
        try:
            history = check_relaunch(config_dict, task, run_dir)
        except RunDirConflict:
            if not replace:
                raise
            history = None
            log(f"previous run moved to {_rename_aside(run_dir, lock=False)}")
        if history is not None:
            yield history
            return
    with exclusive(run_dir):
        yield []


# -- one launch at a time -------------------------------------------------------


def _sync(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def _file_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "a process that did not say which"
            raise RunDirConflict(f"{directory} is in use by another launch ({holder}); wait for it to end, "
                                 "or use another run_dir") from None
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {now}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(directory: str | Path) -> Iterator[None]:
    """Hold ``directory`` for this launch (process 0 of a job takes the lock;
    every process learns whether it got it)."""
    import jax

    directory = Path(directory)
    with contextlib.ExitStack() as held:
        refusal = None
        if jax.process_index() == 0:
            try:
                held.enter_context(_file_lock(directory))
            except RunDirConflict as err:
                refusal = err
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            refused = int(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
            if refused and refusal is None:
                refusal = RunDirConflict(f"{directory} is in use by another launch (process 0 was refused the lock)")
        if refusal is not None:
            raise refusal
        yield


def run_dir_of(config: TaskConfig) -> Path:
    """Where ``config``'s task writes: its ``run_dir``, else ``runs/<task>-<timestamp>``."""
    return Path(config.run_dir) if config.run_dir else Path("runs") / f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_task(config: TaskConfig, log=print, inputs: dict | None = None, replace: bool = False) -> dict:
    """Run ``config``'s task in its run directory: its inputs are checked
    first, then the directory is claimed (see :mod:`jaxrec.tasks.run_dir`:
    one launch at a time, never over another run), then the manifest says
    running, then finished with the outputs, failed with the error, or
    interrupted. A relaunch that is refused (its checkpoints belong to another
    model or chain) leaves the directory as it was. ``inputs``: fingerprints
    of the runs a pipeline stage reads, recorded in its manifest. ``replace``:
    move a run the directory holds aside instead of refusing to write over it."""
    import jax

    from jaxrec.runs import Run
    from jaxrec.train.checkpoint import ResumeError

    check_inputs(config)
    run_dir = run_dir_of(config)
    config_dict = to_dict(config)
    with claimed(run_dir, config_dict, config.task, replace, log) as relaunched_with:
        run = Run(run_dir, config.task, config_dict, to_yaml(config), writer=jax.process_index() == 0,
                  inputs=inputs, relaunched_with=relaunched_with).open()
        log(f"run directory: {run_dir}")
        try:
            summary = TASKS[config.task].run(config, run, log=log)
        except ResumeError:
            run.restore_previous()
            raise
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (jaxrec.train.interrupt)
            run.interrupt(err)
            raise
        except BaseException as err:
            run.fail(err)
            raise
        run.finish(summary)
    return summary
