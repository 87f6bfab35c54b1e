"""Pipeline configs: named stages, each a task config, with the sections they
share written once and their inputs named by stage.

A pipeline config is a YAML file with a ``stages`` mapping::

    run_dir: runs/quickstart        # each stage runs in run_dir/<stage>
    data: {name: ml-100k}           # shared: merged into every stage whose task has a 'data' section
    stages:
      csft: {task: csft, loop: {steps: 100}}
      mntp: {task: mntp, model: {init_from: csft}}     # a stage name where a run directory goes
      embed: {task: encode, model: {init_from: mntp}}
      sasrec: {task: seqrec, recommender: {items: {kind: llm, embeddings: embed}}}
    report: {...}                   # what the pipeline's report compares (see report.py)

``include: [other.yaml]`` adds another pipeline's stages as they are there
(its shared sections, in its own run directory), so pipelines share stages
instead of training them again; ``{file: other.yaml, stages: [contrastive]}``
adds only those stages and the stages they read. A stage of the same name
here merges its keys into the included one.

``--set`` overrides: ``stages.csft.loop.steps=10`` changes one stage (included
or not); ``data.name=X`` changes a shared section here and in every included
file that has it; ``run_dir=X`` this file's directory only.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path

from jaxrec.config import apply_override, culprit_override, include_entries, merge_trees, read_tree
from jaxrec.errors import ConfigError
from jaxrec.inputs import input_fields, value_at
from jaxrec.registry import config_class

PIPELINE_KEYS = ("run_dir", "include", "stages", "report")


def is_pipeline(tree: dict) -> bool:
    return "stages" in tree


@dataclasses.dataclass
class Stage:
    """One stage: its task's config tree (shared sections merged in, stage
    names not yet resolved), where it runs, and the stages it reads."""

    name: str
    tree: dict
    run_dir: Path
    origin: str
    needs: dict[str, str] = dataclasses.field(default_factory=dict)
    """config field ('model.init_from') -> the stage it names."""

    @property
    def task(self) -> str:
        return self.tree["task"]

    def resolved_tree(self, stages: dict[str, "Stage"]) -> dict:
        """The stage's config tree with stage names replaced by their run directories."""
        tree = copy.deepcopy(self.tree)
        for field, stage in self.needs.items():
            *sections, key = field.split(".")
            node = value_at(tree, tuple(sections))
            node[key] = str(stages[stage].run_dir) + node[key][len(stage):]
        tree["run_dir"] = str(self.run_dir)
        return tree


@dataclasses.dataclass
class Pipeline:
    path: Path
    run_dir: Path
    stages: dict[str, Stage]
    report: dict

    def cpu_devices(self) -> int | None:
        """The one ``mesh.cpu_devices`` of the stages (a process splits its CPU once, before JAX starts)."""
        counts = {name: (s.tree.get("mesh") or {}).get("cpu_devices") for name, s in self.stages.items()}
        values = {v for v in counts.values() if v is not None}
        if len(values) > 1:
            raise ConfigError(f"{self.path}: mesh.cpu_devices differs between stages "
                              f"({', '.join(f'{k}: {v}' for k, v in counts.items() if v is not None)}); one process "
                              "splits its CPU once: set it in the shared mesh section")
        return values.pop() if values else None

    def upstream(self, name: str) -> list[str]:
        return list(dict.fromkeys(self.stages[name].needs.values()))


def _task_sections(task: str, origin: str) -> list[str]:
    from jaxrec.registry import config_class, sections

    return sections(config_class(task, origin))


def _stage_name(value, names) -> str | None:
    """The stage a reference names: 'embed', or 'sasrec/seed-1' for one seed of it."""
    if not isinstance(value, str):
        return None
    head = value.split("/", 1)[0]
    return head if head in names and (value == head or value[len(head) + 1:].startswith("seed-")) else None


def _section(assignment: str) -> str:
    """The top-level key an override ``a.b=c`` sets."""
    return assignment.split("=", 1)[0].split(".")[0]


def _read(path: Path, overrides: list[str], seen: tuple[Path, ...],
          inherited: list[str] = ()) -> tuple[dict[str, Stage], dict, Path]:
    tree = read_tree(path)
    own_stages = set(tree.get("stages") or {}) if isinstance(tree.get("stages"), dict) else set()
    overrides = [*(o for o in inherited if _section(o) in tree), *overrides]
    for assignment in overrides:
        try:
            apply_override(tree, assignment)
        except ConfigError as err:
            raise ConfigError(f"--set {assignment}: {err}") from None
    origin = str(path)
    if not isinstance(tree.get("stages"), dict) or not tree["stages"]:
        raise ConfigError(f"{origin}: stages: expected a mapping of stage names to task configs")
    run_dir = Path(tree.get("run_dir") or Path("runs") / path.stem)
    if "task" in tree:
        raise ConfigError(f"{origin}: a pipeline has no top-level task; each stage names its own (stages.<name>.task)")
    shared = {k: v for k, v in tree.items() if k not in PIPELINE_KEYS}

    stages: dict[str, Stage] = {}
    passed_down = [o for o in overrides if _section(o) not in PIPELINE_KEYS]
    for entry in include_entries(tree.get("include")):
        file, wanted = (entry, None) if isinstance(entry, str) else (entry.get("file"), entry.get("stages"))
        if not isinstance(file, str):
            raise ConfigError(f"{origin}: include: expected FILE or {{file: FILE, stages: [NAMES]}}, got {entry!r}")
        included = (path.parent / file) if not Path(file).is_absolute() else Path(file)
        if included.resolve() in seen:
            raise ConfigError(f"{origin}: include {file} includes itself")
        theirs = _read(included, [], (*seen, included.resolve()), passed_down)[0]
        stages.update(_with_upstream(theirs, wanted, f"{origin}: include {file}"))

    known_stages = own_stages | set(stages)
    for assignment in overrides:
        parts = assignment.split("=", 1)[0].split(".")
        if parts[0] == "stages" and len(parts) > 1 and parts[1] not in known_stages:
            close = difflib.get_close_matches(parts[1], sorted(known_stages), n=1)
            raise ConfigError(f"--set {assignment}: {path} has no stage {parts[1]!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else "")
                              + f"; its stages: {', '.join(sorted(known_stages))}")

    used: set[str] = set()
    for name, body in tree["stages"].items():
        where = f"{origin}: stages.{name}"
        if not isinstance(name, str) or "/" in name or name.startswith((".", "-")):
            raise ConfigError(f"{where}: a stage name must be a plain directory name")
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: expected a mapping (task: ..., and its sections)")
        if name in stages:  # keys merged into an included stage
            if "task" in body and body["task"] != stages[name].task:
                raise ConfigError(f"{where}: task {body['task']} differs from the included stage's "
                                  f"{stages[name].task}; give this stage another name")
            stages[name].tree = merge_trees(stages[name].tree, {k: v for k, v in body.items() if k != "run_dir"})
            if body.get("run_dir"):
                stages[name].run_dir = Path(body["run_dir"])
            continue
        if "task" not in body:
            raise ConfigError(f"{where}: task is not set (one of the tasks in python -m jaxrec.launch --help)")
        own = _task_sections(body["task"], where)
        applied = {k: v for k, v in shared.items() if k in own}
        used.update(applied)
        stage_dir = Path(body["run_dir"]) if body.get("run_dir") else run_dir / name
        stages[name] = Stage(name, merge_trees(applied, {k: v for k, v in body.items() if k != "run_dir"}), stage_dir, where)

    from jaxrec.registry import TASKS, sections

    known = {s for t in TASKS.values() for s in sections(t.config)}
    for key in shared:
        if key not in known:
            raise ConfigError(f"{origin}: unknown top-level key '{key}'; a pipeline has {', '.join(PIPELINE_KEYS)} "
                              f"and shared sections ({', '.join(sorted(known))})")
        if key not in used:
            raise ConfigError(f"{origin}: shared section '{key}' is used by none of this file's stages")
    return stages, tree.get("report") or {}, run_dir


def run_fields(task: str, reads_only_runs: bool = False) -> list[tuple[str, ...]]:
    """Paths of the task's config fields that may name a run directory (with
    ``reads_only_runs``: those that never name anything else, such as an asset)."""
    return [name for name, field in input_fields(config_class(task)).items()
            if field.run and not (reads_only_runs and field.asset)]


def _references(stage: Stage, names) -> dict[str, str]:
    """config field -> the stage it names, for the fields that name run directories."""
    found = {}
    for path in run_fields(stage.task):
        target = _stage_name(value_at(stage.tree, path), names)
        if target is not None:
            found[".".join(path)] = target
    return found


def _check_unresolved_references(stage: Stage, names: list[str]) -> None:
    """A field that reads a run and names neither a stage nor an existing path is a typo, found now
    rather than when that stage starts."""
    for path in run_fields(stage.task, reads_only_runs=True):
        value = value_at(stage.tree, path)
        if not isinstance(value, str) or _stage_name(value, names) is not None or Path(value).exists():
            continue
        close = difflib.get_close_matches(value.split("/", 1)[0], names, n=1)
        raise ConfigError(f"{stage.origin}: {'.'.join(path)}: {value!r} is neither a stage of this pipeline"
                          + (f" (did you mean {close[0]!r}?)" if close else f" ({', '.join(names)})")
                          + " nor an existing run directory or file")


def _with_upstream(stages: dict[str, Stage], wanted: list[str] | None, where: str) -> dict[str, Stage]:
    """``wanted`` stages (all when None) and every stage they read, in their order."""
    if wanted is None:
        return stages
    unknown = [w for w in wanted if w not in stages]
    if unknown:
        raise ConfigError(f"{where}: no stage {', '.join(map(str, unknown))} there (it has {', '.join(stages)})")
    keep = set(wanted)
    for name in reversed(list(stages)):
        if name in keep:
            keep.update(_references(stages[name], stages).values())
    return {name: stage for name, stage in stages.items() if name in keep}


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    """Read a pipeline config: includes, shared sections merged, stage
    references found and checked (a stage may only read stages before it),
    every stage's config validated. An error that only an override brings
    names that ``--set``, not the file."""
    path = Path(path)
    try:
        return _load(path, list(overrides))
    except ConfigError as err:
        culprit = culprit_override(lambda these: _load(path, these), list(overrides)) if overrides else None
        if culprit is None:
            raise
        raise ConfigError(f"--set {culprit}: {str(err).removeprefix(f'{path}: ')}") from None


def _load(path: Path, overrides: list[str]) -> Pipeline:
    stages, report, run_dir = _read(path, overrides, (path.resolve(),))
    names = list(stages)
    for stage in stages.values():
        _check_unresolved_references(stage, names)
    for position, stage in enumerate(stages.values()):
        for field, target in _references(stage, names).items():
            if names.index(target) >= position:
                raise ConfigError(f"{stage.origin}: {field}: " + _order_problem(stages, stage.name, target))
            stage.needs[field] = target
    pipeline = Pipeline(path, run_dir, stages, report)
    for name in names:
        stage_config(pipeline, name)
    return pipeline


def _order_problem(stages: dict[str, Stage], name: str, target: str) -> str:
    """Why stage ``name`` cannot read ``target``: itself, a cycle (named), or a later stage."""
    if target == name:
        return f"stage '{target}' is this stage '{name}'"
    reads = {n: set(_references(s, stages).values()) for n, s in stages.items()}
    path, todo = {target: None}, [target]
    while todo:  # is there a way back from target to name?
        current = todo.pop()
        for nxt in sorted(reads[current]):
            if nxt not in path:
                path[nxt] = current
                todo.append(nxt)
    if name not in path:
        return f"stage '{target}' comes later; list it before '{name}'"
    cycle, current = [name], name
    while current != target:
        current = path[current]
        cycle.append(current)
    cycle = [name, *reversed(cycle[1:]), name]
    return (f"stages read each other in a cycle, {' -> '.join(cycle)} (each reads the next); "
            "one of them must read a run made outside the cycle")


def stage_config(pipeline: Pipeline, name: str):
    """The stage's validated task config (stage names resolved to run directories)."""
    from jaxrec.registry import build_config

    stage = pipeline.stages[name]
    return build_config(stage.resolved_tree(pipeline.stages), stage.origin)
