"""The registry of tasks: each task's name, its config class (only the
sections it uses) and its ``run(config, run, log)`` function, registered
once; the validation of a config tree into its task's class; and loading a
config (file and ``--set`` overrides). Everything that needs the list of tasks (the config loader, the
launcher's help, pipelines, export, tests) reads it from :data:`TASKS`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxrec.config import apply_override, build, culprit_override, read_tree
from jaxrec.errors import ConfigError
from jaxrec.methods import llm2rec, llmemb, llmsrec
from jaxrec.tasks import encode, seqrec
from jaxrec.tasks.specs import Task, TaskConfig

# a new method: its package's TASKS here
TASKS: dict[str, Task] = {task.name: task for task in (encode.TASK, *llm2rec.TASKS, *llmemb.TASKS, seqrec.TASK,
                                                       *llmsrec.TASKS)}
DEFAULT_TASK = "encode"


def sections(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_class(task: str, origin: str = "config") -> type:
    if task not in TASKS:
        raise ConfigError(f"{origin}: task: expected one of {', '.join(TASKS)}, got {task!r}")
    return TASKS[task].config


def build_config(tree: dict, origin: str = "config", stored: bool = False) -> TaskConfig:
    """Validate a config tree into the config class of its ``task`` (default ``encode``);
    ``stored``: a tree a run stored, read in today's shape (:func:`~jaxrec.config.as_stored_now`)."""
    task = tree.get("task", DEFAULT_TASK)
    cls = config_class(task, origin)
    own = sections(cls)
    for key in tree:
        users = [name for name, t in TASKS.items() if key in sections(t.config)]
        if key not in own and users:
            raise ConfigError(f"{origin}: section '{key}' is not used by task '{task}' (it belongs to "
                              f"{', '.join(users)}); remove it or set task to one of those")
    try:
        config = build(cls, {**tree, "task": task}, stored=stored)
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None
    if getattr(getattr(config, "batch", None), "pack", False) and not TASKS[task].packs_examples:
        packing = [name for name, t in TASKS.items() if t.packs_examples]
        raise ConfigError(f"{origin}: batch.pack works for the {', '.join(packing)} tasks; set batch.pack=false")
    return config


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
