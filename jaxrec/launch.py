"""Run a jaxrec task, or a pipeline of them, from a YAML config.

    python -m jaxrec.launch --config configs/quickstart.yaml [--set key.path=value ...] [--stages a,b] [--dry-run]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jaxrec.config import read_tree, to_yaml
from jaxrec.errors import ConfigError
from jaxrec.runtime import keep_compiled_programs, reuse_host_buffers, split_cpu

_EPILOG_TAIL = """
pipelines:
  A config with a 'stages' mapping is a pipeline: named stages, each a task config, run in
  order in RUN_DIR/<stage>. Sections written at the top level (data, model, seed, ...) are
  shared by every stage whose task has them; a stage's own keys win. A stage reads an
  earlier stage's results by naming it where a run directory goes:
      model.init_from: csft          recommender.items.embeddings: embed
  'include: [other.yaml]' adds another pipeline's stages (run in that pipeline's directory),
  so pipelines share stages instead of training them twice.
  Launched again, a finished stage whose config and inputs are unchanged is skipped, an
  interrupted one resumes from its checkpoint, and a stage whose config or inputs changed
  runs again (its old directory kept as <stage>.replaced-<n>) together with every stage
  after it that reads it. One launch at a time holds a pipeline's directory. --dry-run prints that plan and runs nothing; --stages runs a subset.
  Overrides: --set data.name=PATH (a shared section), --set stages.csft.loop.steps=50.
  Results: RUN_DIR/pipeline.json (each stage's action, status, seconds), and with a
  'report' section RUN_DIR/results.json, results.md and plots (*.png).

run directories:
  Every run directory holds config.yaml and manifest.json (task, config hash, status,
  base model, the runs it was initialised from, its inputs and outputs with checksums).
  Training tasks also write checkpoints/, metrics.jsonl and tensorboard/ and resume from
  their latest intact checkpoint when started again; SIGTERM or Ctrl-C saves the current
  step first. A run directory takes one launch at a time, and only the run it holds: a
  launch with another task or a changed config is refused (only loop.steps, loop.epochs
  and loop.patience may change, to train longer) unless --replace keeps the old run as
  RUN_DIR.replaced-<n>.

chaining runs by hand:
  A later stage starts from what an earlier one trained with model.init_from: RUN_DIR
  (LoRA merged into the base, full weights, added token rows; along the whole chain).
  Where weights come from: this run's own checkpoint (resume) > model.init_from > model.name.

examples:
  python -m jaxrec.launch --config configs/quickstart.yaml                 # the LLM2Rec pipeline on ml-100k
  python -m jaxrec.launch --config configs/quickstart.yaml --dry-run       # what would run, resume or be skipped
  python -m jaxrec.launch --config configs/quickstart.yaml --stages csft,mntp
  python -m jaxrec.launch --config configs/llm2rec/smollm2_video_games.yaml --set data.name=PATH
  python -m jaxrec.launch --config configs/csft_smollm2.yaml --set run_dir=runs/csft     # one task
  python -m jaxrec.launch --set task=encode --set model.init_from=runs/csft --set run_dir=runs/embed

Named assets (model smollm2-135m, dataset ml-100k) are fetched once into $JAXREC_CACHE
(default ~/.cache/jaxrec); `python -m jaxrec.assets list` shows them. Compiled programs are
kept in $JAXREC_CACHE/xla/<machine kind>, so a resumed stage, or a later one with the same
shapes, does not compile them again: JAXREC_COMPILATION_CACHE=DIR keeps them elsewhere,
=off nowhere.
"""


def _epilog() -> str:
    from jaxrec.registry import TASKS

    lines = ["tasks:"] + [f"  {name:<12} {task.help}" for name, task in TASKS.items()]
    return "\n".join(lines) + "\n" + _EPILOG_TAIL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrec.launch",
        description="Run a jaxrec task, or a pipeline of tasks, described by a YAML config.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path,
                        help="YAML config file (omit to use every default); a line 'extends: base.yaml' in it "
                        "starts from that file (relative to this one) and merges this one over it")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set encode.batch_size=32 (repeatable; values are YAML)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config (of every stage) and exit")
    parser.add_argument("--stages", type=lambda text: [s for s in text.split(",") if s], metavar="NAMES",
                        help="pipelines: run only these stages (comma-separated); the stages they read must be "
                        "finished and up to date")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would run, resume or be skipped (pipelines: every stage, its inputs and "
                        "run directory), then exit")
    parser.add_argument("--replace", action="store_true",
                        help="single tasks: when run_dir holds another task's run, or this task's run made with "
                        "another config, keep it as RUN_DIR.replaced-<n> and start anew (without it such a launch "
                        "is refused; pipelines do this for every stage whose config or inputs changed)")
    parser.add_argument(
        "--distributed", action="store_true",
        help="join a multi-process JAX job (TPU pod, SLURM, or the JAXREC_COORDINATOR / JAXREC_NUM_PROCESSES / "
        "JAXREC_PROCESS_ID variables that launch/local_multihost.sh sets) before running",
    )
    return parser.parse_args(argv)


def init_distributed() -> None:
    """Start JAX's multi-process runtime: from JAXREC_* variables if set
    (CPU jobs on one machine use gloo collectives), else auto-detected
    (TPU pods, SLURM)."""
    import jax

    coordinator = os.environ.get("JAXREC_COORDINATOR")
    if coordinator is None:
        jax.distributed.initialize()
        return
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator, num_processes=int(os.environ["JAXREC_NUM_PROCESSES"]), process_id=int(os.environ["JAXREC_PROCESS_ID"])
    )


def _logger(name: str):
    """Progress lines on stderr, from process 0 only in a multi-process job
    (errors are printed by every process, see ``_exit_code``)."""
    import jax

    if jax.distributed.is_initialized() and jax.process_index() != 0:
        return lambda message: None
    return lambda message: print(f"[jaxrec {name}] {message}", file=sys.stderr, flush=True)


def _start_runtime(args, cpu_devices) -> None:
    # both before JAX starts its threads
    reuse_host_buffers()
    split_cpu(cpu_devices)
    keep_compiled_programs()
    if args.distributed:
        init_distributed()


def _exit_code(work) -> int:
    """Run ``work()``: a config error exits 2, an input or runtime error 1, a
    signal 128 + its number, each as one line on stderr."""
    from jaxrec.train.interrupt import exit_status, sigterm_raises

    try:
        with sigterm_raises():
            return work() or 0
    except KeyboardInterrupt as err:
        print(f"interrupted: {err or 'stopped by SIGINT'}; launch the same command again to resume",
              file=sys.stderr)
        return exit_status(err)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _main_pipeline(args) -> int | None:
    from jaxrec.pipelines.config import load_pipeline, stage_config
    from jaxrec.pipelines.runner import run_pipeline

    if args.replace:
        raise ConfigError("--replace is for single tasks: a pipeline keeps the old run of every stage that runs "
                          "again as <stage>.replaced-<n> by itself")
    pipeline = load_pipeline(args.config, args.overrides)
    if args.print_config:
        for name in pipeline.stages:
            print(f"# stage {name}\n{to_yaml(stage_config(pipeline, name))}---")
        return 0
    if not args.dry_run:  # planning needs no JAX runtime (and must not join a distributed job)
        _start_runtime(args, pipeline.cpu_devices())
    run_pipeline(pipeline, args.stages, args.dry_run, stage_log=_logger, log=_logger("pipeline"))


def _main_task(args) -> int | None:
    from jaxrec.registry import load_config
    from jaxrec.run_dir import run_dir_of, run_task

    if args.stages:
        raise ConfigError(f"--stages needs a pipeline config (one with a 'stages' mapping); "
                          f"{args.config or 'the default config'} is a single task")
    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    if args.dry_run:
        from jaxrec.config import to_dict
        from jaxrec.run_dir import check_relaunch
        from jaxrec.tasks.specs import check_inputs

        check_inputs(config)  # what the launch itself checks before it loads anything
        run_dir = run_dir_of(config)
        if not args.replace:
            check_relaunch(to_dict(config), config.task, run_dir)
        print(f"task {config.task} would run in {run_dir}\n{to_yaml(config)}", end="")
        return 0
    _start_runtime(args, getattr(getattr(config, "mesh", None), "cpu_devices", None))
    run_task(config, log=_logger(config.task), replace=args.replace)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jaxrec.pipelines.config import is_pipeline

    pipeline = lambda: args.config is not None and is_pipeline(read_tree(args.config))
    return _exit_code(lambda: (_main_pipeline if pipeline() else _main_task)(args))


if __name__ == "__main__":
    sys.exit(main())
