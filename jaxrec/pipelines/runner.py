"""Run a pipeline's stages in order, each in its own run directory, as the
plan says; then write the pipeline's report.

The pipeline directory gets ``pipeline.yaml`` (the resolved stages),
``pipeline.json`` (each stage's action, run directory, status and seconds)
and, when the config has a ``report`` section, the report's files.
"""

from __future__ import annotations

import contextlib
import time

import yaml

from jaxrec.config import to_dict
from jaxrec.io import write_bytes_atomic, write_json_atomic
from jaxrec.pipelines.config import Pipeline
from jaxrec.pipelines.plan import StagePlan, describe, fingerprints, make_plan
from jaxrec.progress import progress_bar, shared_display
from jaxrec.run_dir import run_task
from jaxrec.run_dir import exclusive, move_aside
from jaxrec.tasks.specs import check_inputs


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _stage_records(plan: list[StagePlan], timings: dict[str, dict]) -> list[dict]:
    return [{"name": s.name, "task": s.task, "run_dir": str(s.run_dir), "action": s.action, "reason": s.reason,
             "selected": s.selected, "inputs": s.inputs, "status": "pending", **timings.get(s.name, {})} for s in plan]


def _write_record(pipeline: Pipeline, plan: list[StagePlan], timings: dict[str, dict]) -> None:
    import jax

    if jax.process_index() != 0:
        return
    pipeline.run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {step.name: to_dict(step.config) for step in plan}
    write_bytes_atomic(pipeline.run_dir / "pipeline.yaml", yaml.safe_dump(resolved, sort_keys=False).encode())
    write_json_atomic(pipeline.run_dir / "pipeline.json",
                      {"config": str(pipeline.path), "stages": _stage_records(plan, timings)})


def run_pipeline(pipeline: Pipeline, selected: list[str] | None = None, dry_run: bool = False,
                 stage_log=lambda name: print, log=print) -> list[StagePlan]:
    """Run (or, with ``dry_run``, only plan) the pipeline; returns the plan.
    ``stage_log(name)`` gives the log function of one stage. A launch holds the
    pipeline's directory from planning to report (one launch at a time)."""
    from jaxrec.pipelines.report import report_spec

    if pipeline.report:
        report_spec(pipeline)  # a bad report section fails now, not after hours of stages
    with exclusive(pipeline.run_dir) if not dry_run else contextlib.nullcontext():
        plan = make_plan(pipeline, selected)
        log(f"pipeline {pipeline.path} -> {pipeline.run_dir}\n{describe(plan)}")
        for step in plan:  # every input a stage needs that no earlier stage makes must exist before anything runs
            if step.selected and step.action != "skip":
                check_inputs(step.config, produced={str(p.run_dir) for p in plan})
        if not dry_run:
            _run_stages(pipeline, plan, stage_log, log)
    return plan


def _run_stages(pipeline: Pipeline, plan: list[StagePlan], stage_log, log) -> None:
    from jaxrec.pipelines.report import write_report

    todo = [s for s in plan if s.selected and s.action != "skip"]
    timings: dict[str, dict] = {}
    started = time.perf_counter()
    eta = ""
    with shared_display() as shown, progress_bar("pipeline", total=len(todo), enabled=shown) as advance:
        for index, step in enumerate(todo, 1):
            header = f"stage {index}/{len(todo)}: {step.name} ({step.task}, {step.action})"
            advance(0, status=header + eta)
            log(f"{header} - {step.reason}")
            if step.action == "rerun" and step.run_dir.exists():
                log(f"previous run moved to {move_aside(step.run_dir)}")
            stage_start = time.perf_counter()
            try:
                run_task(step.config, log=stage_log(step.name), inputs=fingerprints(step.config))
            except BaseException as err:
                ended = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
                timings[step.name] = {"status": ended, "seconds": round(time.perf_counter() - stage_start, 1)}
                _write_record(pipeline, plan, timings)
                log(f"stage {step.name} {'was interrupted' if ended == 'interrupted' else 'did not finish'}; later "
                    "stages did not run. Launch the same command again to resume it.")
                raise
            seconds = time.perf_counter() - stage_start
            timings[step.name] = {"status": "finished", "seconds": round(seconds, 1)}
            elapsed = time.perf_counter() - started
            left = elapsed / index * (len(todo) - index)
            eta = f"; about {_hms(left)} left by the mean stage so far"
            log(f"stage {index}/{len(todo)} {step.name} finished in {_hms(seconds)}; pipeline {_hms(elapsed)} "
                f"elapsed" + (f", about {_hms(left)} to go (by the mean stage so far)" if index < len(todo) else ""))
            advance(1)
            _write_record(pipeline, plan, timings)
    for step in plan:
        if step.name not in timings:
            timings[step.name] = {"status": "skipped" if step.action == "skip" else "not selected"}
    _write_record(pipeline, plan, timings)
    if pipeline.report:
        write_report(pipeline, _stage_records(plan, timings), log=log)
