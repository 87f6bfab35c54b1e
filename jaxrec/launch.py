"""Run a jaxrec task from a YAML config.

    python -m jaxrec.launch --config configs/quickstart.yaml [--set key.path=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jaxrec.config import to_dict, to_yaml
from jaxrec.errors import ConfigError
from jaxrec.runtime import reuse_host_buffers, split_cpu

_EPILOG_TAIL = """
  Every run directory holds config.yaml and manifest.json (task, config hash, status,
  base model, the runs it was initialised from, its outputs with checksums). Training
  tasks also write checkpoints/, metrics.jsonl and tensorboard/ and resume from their
  latest intact checkpoint when started again.

chaining runs:
  A later stage starts from what an earlier one trained with model.init_from: RUN_DIR
  (LoRA merged into the base, full weights, added token rows; along the whole chain).
  Where weights come from: this run's own checkpoint (resume) > model.init_from > model.name.

examples:
  python -m jaxrec.launch --config configs/quickstart.yaml
  python -m jaxrec.launch --config configs/csft_smollm2.yaml --set run_dir=runs/csft
  python -m jaxrec.launch --config configs/mntp_smollm2.yaml --set model.init_from=runs/csft --set run_dir=runs/mntp
  python -m jaxrec.launch --set task=encode --set model.init_from=runs/mntp --set run_dir=runs/embed

Named assets (model smollm2-135m, dataset ml-100k) are fetched once into $JAXREC_CACHE
(default ~/.cache/jaxrec); `python -m jaxrec.assets list` shows them.
"""


def _epilog() -> str:
    from jaxrec.tasks import TASKS

    lines = ["tasks:"] + [f"  {name:<12} {task.help}" for name, task in TASKS.items()]
    return "\n".join(lines) + "\n" + _EPILOG_TAIL


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrec.launch",
        description="Run a jaxrec task described by a YAML config.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML config file (omit to use every default)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set encode.batch_size=32 (repeatable; values are YAML)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
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


def default_run_dir(config) -> Path:
    return Path("runs") / f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_task(config, log=print) -> dict:
    """Run ``config``'s task in its run directory: the manifest says running,
    then finished with the outputs, or failed with the error. A relaunch that
    is refused (its checkpoints belong to another model or chain) leaves the
    directory as it was."""
    import jax

    from jaxrec.runs import Run
    from jaxrec.tasks import TASKS
    from jaxrec.train.checkpoint import ResumeError

    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    run = Run(run_dir, config.task, to_dict(config), to_yaml(config), writer=jax.process_index() == 0).open()
    log(f"run directory: {run_dir}")
    try:
        summary = TASKS[config.task].run(config, run, log=log)
    except ResumeError:
        run.restore_previous()
        raise
    except BaseException as err:
        run.fail(err if not isinstance(err, KeyboardInterrupt) else "interrupted")
        raise
    run.finish(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from jaxrec.tasks import load_config

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(config), end="")
        return 0

    # both before JAX starts its threads
    reuse_host_buffers()
    split_cpu(getattr(getattr(config, "mesh", None), "cpu_devices", None))
    if args.distributed:
        init_distributed()
    import jax

    prefix = f"[jaxrec {config.task}" + (f" {jax.process_index()}/{jax.process_count()}]" if args.distributed else "]")
    log = lambda message: print(f"{prefix} {message}", file=sys.stderr, flush=True)
    try:
        run_task(config, log=log)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
