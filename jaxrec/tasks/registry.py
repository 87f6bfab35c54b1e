"""The registry of tasks: each task's name, its config class (only the
sections it uses) and its ``run(config, run, log)`` function, registered
once; and the validation of a config tree into its task's class."""

from __future__ import annotations

import dataclasses

from jaxrec.config import build
from jaxrec.errors import ConfigError
from jaxrec.tasks import encode, llmsrec, lm_training, seqrec
from jaxrec.tasks.specs import Task, TaskConfig


TASKS: dict[str, Task] = {task.name: task for task in (encode.TASK, *lm_training.TASKS, seqrec.TASK, llmsrec.TASK)}
DEFAULT_TASK = "encode"


def sections(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def config_class(task: str, origin: str = "config") -> type:
    if task not in TASKS:
        raise ConfigError(f"{origin}: task: expected one of {', '.join(TASKS)}, got {task!r}")
    return TASKS[task].config


def build_config(tree: dict, origin: str = "config") -> TaskConfig:
    """Validate a config tree into the config class of its ``task`` (default ``encode``)."""
    task = tree.get("task", DEFAULT_TASK)
    cls = config_class(task, origin)
    own = sections(cls)
    for key in tree:
        users = [name for name, t in TASKS.items() if key in sections(t.config)]
        if key not in own and users:
            raise ConfigError(f"{origin}: section '{key}' is not used by task '{task}' (it belongs to "
                              f"{', '.join(users)}); remove it or set task to one of those")
    try:
        return build(cls, {**tree, "task": task})
    except ConfigError as err:
        raise ConfigError(f"{origin}: {err}") from None
