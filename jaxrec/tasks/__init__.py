"""The tasks ``python -m jaxrec.launch`` runs, each with its own config class:
loading a config (file and ``--set`` overrides) and running a task in its run
directory. The tasks themselves are registered in :mod:`jaxrec.tasks.registry`;
everything that needs their list (the config loader, the launcher's help,
tests) reads it from :data:`TASKS`.
"""

from __future__ import annotations

import time
from pathlib import Path

from jaxrec.config import apply_override, culprit_override, read_tree, to_dict, to_yaml
from jaxrec.errors import ConfigError
from jaxrec.tasks.registry import TASKS, build_config
from jaxrec.tasks.specs import TaskConfig, check_inputs


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TaskConfig:
    """Read a YAML config, apply ``key.path=value`` overrides, and validate it
    into the config class of its ``task``. An error names the file when the
    file is wrong and the ``--set`` when an override is."""
    tree = read_tree(path)
    config = build_config(tree, str(path) if path is not None else "config")
    if not overrides:
        return config
    for assignment in overrides:
        try:
            apply_override(tree, assignment)
        except ConfigError as err:
            raise ConfigError(f"--set {assignment}: {err}") from None
    try:
        return build_config(tree, "config")
    except ConfigError as err:
        culprit = culprit_override(lambda these: _with_overrides(path, these), overrides)
        raise ConfigError(f"--set {culprit}: {str(err).removeprefix('config: ')}") from None


def _with_overrides(path: str | Path | None, overrides: list[str]) -> TaskConfig:
    tree = read_tree(path)
    for assignment in overrides:
        apply_override(tree, assignment)
    return build_config(tree, "config")


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
    from jaxrec.tasks.run_dir import claimed
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
