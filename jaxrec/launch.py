"""Run a jaxrec task from a YAML config.

    python -m jaxrec.launch --config configs/quickstart.yaml [--set key.path=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jaxrec.config import ConfigError, RunConfig, load_config, to_yaml
from jaxrec.io import write_bytes_atomic
from jaxrec.runtime import reuse_host_buffers, split_cpu

_EPILOG = """\
tasks:
  encode       embed every item title of a dataset with an LM; writes item_embeddings.npy,
               item_ids.json and summary.json into the run directory
  csft         causal LM fine-tuning on users' title sequences (LLM2Rec step 1)
  mntp         masked next-token prediction on item titles, bidirectional (LLM2Rec step 2b)
  contrastive  item-level contrastive learning on titles (LLM2Rec step 2c)
  scft         supervised contrastive fine-tuning on attribute prompts (LLMEmb step 1)
  seqrec       SASRec / GRU4Rec / BERT4Rec on ID or frozen-LLM items, early-stopped and tested
               (LLM2Rec's and LLMEmb's downstream recommenders)
  llmsrec      distil a seqrec SASRec's user vectors into a frozen LM through heads and added
               tokens, then rank with it (LLM-SRec)
  Training tasks write checkpoints/, metrics.jsonl and tensorboard/ into the run directory
  and resume from its latest checkpoint when started again.

examples:
  python -m jaxrec.launch --config configs/quickstart.yaml
  python -m jaxrec.launch --config configs/quickstart.yaml --set data.name=../shared/data/steam_100k
  python -m jaxrec.launch --set model.name=/path/to/Qwen2-0.5B --set encode.batch_size=32 --print-config
  python -m jaxrec.launch --config configs/mntp_smollm2.yaml --set loop.steps=200

Named assets (model smollm2-135m, dataset ml-100k) are fetched once into $JAXREC_CACHE
(default ~/.cache/jaxrec); `python -m jaxrec.assets list` shows them.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxrec.launch",
        description="Run a jaxrec task described by a YAML config.",
        epilog=_EPILOG,
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


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    split_cpu(config.mesh.cpu_devices)
    if args.distributed:
        init_distributed()
    from jaxrec.pipelines import TASKS

    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    import jax

    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        write_bytes_atomic(run_dir / "config.yaml", to_yaml(config).encode())

    prefix = f"[jaxrec {config.task}" + (f" {jax.process_index()}/{jax.process_count()}]" if args.distributed else "]")
    log = lambda message: print(f"{prefix} {message}", file=sys.stderr, flush=True)
    log(f"run directory: {run_dir}")
    try:
        TASKS[config.task](config, run_dir, log=log)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
