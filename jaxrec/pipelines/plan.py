"""What a pipeline launch will do with each stage: run it, resume it, run it
again, or skip it - decided from the stage's run directory on disk.

- **skip**: the run finished with the same effective config (hash) and the
  same inputs (the fingerprints of the runs it read), and its outputs exist;
- **resume**: the run did not finish (interrupted or failed) and its config
  and inputs are unchanged: launched again, a training stage continues from
  its latest checkpoint;
- **rerun**: the config or the inputs changed, or an output is missing or no
  longer matches its checksum: the old run directory is kept as
  ``<dir>.replaced-<n>`` and the stage runs anew;
- **run**: no run yet.

A stage after one that runs, resumes or reruns runs too: its inputs are about
to change. Nothing stale is ever reused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxrec import runs
from jaxrec.config import path_now, to_dict
from jaxrec.errors import ConfigError
from jaxrec.inputs import input_fields, value_at
from jaxrec.pipelines.config import Pipeline, stage_config
from jaxrec.run_dir import config_changes

ACTIONS = ("run", "resume", "rerun", "skip")


@dataclasses.dataclass
class StagePlan:
    name: str
    task: str
    config: object
    run_dir: Path
    action: str
    reason: str
    inputs: dict[str, str]
    """config field -> the run directory (or file) it reads."""
    selected: bool = True


def input_paths(config) -> dict[str, str]:
    """The run directories (or files) a task config reads, by config field."""
    found = {}
    for path, field in input_fields(type(config)).items():
        value = value_at(config, path)
        if not field.run or not isinstance(value, str):
            continue
        if field.asset and not runs.is_run(value):
            continue  # a base model: its identity is in the config and the checkpoints
        found[".".join(path)] = value
    return found


def _fingerprint(path: str) -> dict | None:
    if Path(path).is_file():  # a matrix a user made
        return {"file": str(Path(path).absolute()), "sha256": runs.sha256_file(path)}
    return runs.fingerprint(path)


def fingerprints(config) -> dict[str, dict | None]:
    """The fingerprint of everything a stage reads (None for what is not a finished run or a file)."""
    return {field: _fingerprint(path) for field, path in input_paths(config).items()}


def _same_input(a: dict | None, b: dict | None) -> bool:
    """Fingerprints name the same results: where the run directory lives (a moved
    or cloned project) does not matter, its config and outputs do."""
    if a is None or b is None:
        return a is b
    return {k: v for k, v in a.items() if k != "run"} == {k: v for k, v in b.items() if k != "run"}


def _decide(config, run_dir: Path, upstream_moving: list[str]) -> tuple[str, str]:
    manifest = runs.read_manifest(run_dir)
    if upstream_moving:
        return ("rerun" if manifest else "run"), f"after {', '.join(upstream_moving)}"
    if manifest is None:
        return "run", "no run yet"
    changed = config_changes(to_dict(config), manifest)
    if changed:
        return "rerun", "config changed: " + ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
    current = fingerprints(config)
    stored = {path_now(type(config), field): value for field, value in manifest.get("inputs", {}).items()}
    changed = [f for f in sorted(set(current) | set(stored)) if not _same_input(current.get(f), stored.get(f))]
    if changed:
        return "rerun", "inputs changed: " + ", ".join(changed)
    if manifest.get("status") == "finished":
        missing = runs.missing_outputs(run_dir)
        if missing:
            return "rerun", "outputs missing: " + ", ".join(missing)
        tampered = runs.changed_outputs(run_dir)
        if tampered:
            return "rerun", "outputs changed since it finished (checksums differ): " + ", ".join(tampered)
        return "skip", "finished, config and inputs unchanged"
    return "resume", f"status {manifest.get('status')}" + (f" ({manifest['error']})" if manifest.get("error") else "")


def make_plan(pipeline: Pipeline, selected: list[str] | None = None) -> list[StagePlan]:
    """Every stage in order with its action; ``selected`` limits what runs (the
    other stages are only checked). A selected stage whose input stage would
    have to run first is an error."""
    if selected:
        unknown = [s for s in selected if s not in pipeline.stages]
        if unknown:
            raise ConfigError(f"--stages: no stage {', '.join(unknown)} in {pipeline.path}; "
                              f"its stages: {', '.join(pipeline.stages)}")
    plans: dict[str, StagePlan] = {}
    for name, stage in pipeline.stages.items():
        config = stage_config(pipeline, name)
        moving = [up for up in pipeline.upstream(name) if plans[up].action != "skip"]
        action, reason = _decide(config, stage.run_dir, moving)
        plans[name] = StagePlan(name, stage.task, config, stage.run_dir, action, reason, input_paths(config),
                                selected=not selected or name in selected)
    for plan in plans.values():
        if not plan.selected or plan.action == "skip":
            continue
        blocked = [up for up in pipeline.upstream(plan.name) if plans[up].action != "skip" and not plans[up].selected]
        if blocked:
            raise ConfigError(f"--stages: stage {plan.name} reads {', '.join(blocked)}, which must "
                              f"{' / '.join(plans[b].action for b in blocked)} first; add "
                              f"{', '.join(blocked)} to --stages")
    return list(plans.values())


def describe(plan: list[StagePlan]) -> str:
    """The plan as a table: stage, task, action and why, inputs, run directory."""
    width = max(len(p.name) for p in plan)
    lines = []
    for index, step in enumerate(plan, 1):
        action = step.action if step.selected else f"({step.action}: not in --stages)"
        lines.append(f"{index:>2}. {step.name:<{width}}  {step.task:<11} {action:<7} {step.reason}")
        for field, path in step.inputs.items():
            lines.append(f"    {'':<{width}}  {field} <- {path}")
        lines.append(f"    {'':<{width}}  -> {step.run_dir}")
    return "\n".join(lines)
