"""python -m jaxrec.bench BENCHMARK [options]; the last line printed is a JSON result."""

from __future__ import annotations

import argparse
import json
import sys

from jaxrec.runtime import reuse_host_buffers
from jaxrec.seqrec.item_vectors import CONDITIONINGS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxrec.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    encode = sub.add_parser("encode", help="encode item titles: jaxrec vs transformers PyTorch eager")
    encode.add_argument("--model", default="smollm2-135m")
    encode.add_argument("--data", default="ml-100k")
    encode.add_argument("--batch-size", type=int, default=64)
    train = sub.add_parser("train", help="LoRA MNTP, contrastive and CSFT steps: jaxrec vs PyTorch + peft")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--steps", type=int, default=12)
    profile = sub.add_parser("profile", help="where one LoRA training step's time goes (JAX profiler + compiled HLO)")
    profile.add_argument("--objective", default="mntp", choices=["mntp", "contrastive", "csft"])
    profile.add_argument("--layout", default="padded", choices=["padded", "packed"])
    profile.add_argument("--batch-size", type=int, default=32)
    profile.add_argument("--steps", type=int, default=3, help="traced steps, after one that compiles")
    profile.add_argument("--top", type=int, default=15, help="how many of the costliest operations to list")
    profile.add_argument("--trace-dir", help="keep the trace here (for TensorBoard / XProf); default: a temporary folder")
    mesh = sub.add_parser("mesh", help="SmolLM2 LoRA MNTP on 8 CPU devices: data=8 against fsdp=8, time and memory")
    mesh.add_argument("--batch-size", type=int, default=32)
    mesh.add_argument("--steps", type=int, default=6)
    step = sub.add_parser("step", help="a full fine-tuning CSFT step of a published model shape: tokens/s and MFU")
    step.add_argument("--shape", default="qwen2-0.5b", choices=["qwen2-0.5b", "smollm2-135m"])
    step.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    step.add_argument("--batch-size", type=int, default=8)
    step.add_argument("--length", type=int, default=512)
    step.add_argument("--steps", type=int, default=10)
    step.add_argument("--peak-tflops", type=float, help="the devices' matmul peak to divide by (default: measured)")
    data = sub.add_parser("data", help="load + preprocess + split a dataset, cold and cached")
    data.add_argument("--path", default="../shared/data/amazon2018_video_games")
    recbole = sub.add_parser("recbole", help="SASRec on ml-100k: jaxrec vs RecBole 1.2.1 (own venv), NDCG@10 and s/epoch")
    recbole.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    recbole.add_argument("--max-epochs", type=int, default=200)
    recbole.add_argument("--work-dir", default="runs/bench-recbole", help="RecBole's venv and both sides' runs")
    recbole.add_argument("--only", choices=["jaxrec", "recbole"], help="run one side only")
    recbole.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override jaxrec's side of configs/sasrec_ml100k.yaml, e.g. mesh.cpu_devices=2")
    recommend = sub.add_parser("recommend", help="a finished seqrec run's recommendations: API and HTTP latency, "
                                                 "batch users/s")
    recommend.add_argument("--run", required=True, help="a finished seqrec run directory")
    recommend.add_argument("--requests", type=int, default=300)
    recommend.add_argument("--batch-users", type=int, default=8192)
    recommend.add_argument("--add-items", type=int, default=100,
                           help="runs with LLM item vectors: time adding this many new items (copies of catalogue "
                                "titles under new ids), with the encoder loaded at start-up (0: skip)")
    xla = sub.add_parser("xla-cpu", help="XLA:CPU option sets on SmolLM2's matmuls and a LoRA MNTP step, each in its "
                                         "own process, against the default (and torch's matmuls)")
    xla.add_argument("--variants", nargs="+", default=None, help="option sets by name (default: all known)")
    xla.add_argument("--rounds", type=int, default=1, help="passes over the variants; each keeps its best")
    xla.add_argument("--steps", type=int, default=4, help="timed MNTP steps per variant")
    xla.add_argument("--seconds", type=float, default=1.0, help="time per matmul shape")
    xla.add_argument("--child", help=argparse.SUPPRESS)
    xla.add_argument("--out", help=argparse.SUPPRESS)
    jobs = sub.add_parser("jobs", help="a small fixed version of each real job, stage seconds beside a saved "
                                       "earlier run's")
    jobs.add_argument("--jobs", nargs="+", default=None, help="quickstart, llmemb, llmsrec (default: all)")
    jobs.add_argument("--save", help="where to save this run's seconds (default: runs/bench-jobs/<machine>.json)")
    jobs.add_argument("--against", help="a saved run to compare with (default: the --save file's last contents)")
    jobs.add_argument("--tree", help="run the jobs with another checkout's code and configs (e.g. the commit "
                                     "before a change), to save a baseline")
    llmemb = sub.add_parser("llmemb-step", help="LLMEmb's recommender step on Beauty: the adapter over the whole "
                                                "catalogue against over the batch's items")
    llmemb.add_argument("--data", help="the Beauty directory (default: the config's)")
    llmemb.add_argument("--steps", type=int, default=20)
    llmemb.add_argument("--rounds", type=int, default=3)
    llmsrec = sub.add_parser("llmsrec-step", help="LLM-SRec's step on ml-100k: item prompt starts recomputed "
                                                  "against cached once per catalogue")
    llmsrec.add_argument("--steps", type=int, default=6)
    llmsrec.add_argument("--rounds", type=int, default=2)
    matmul = sub.add_parser("matmul-dtype", help="SmolLM2's LoRA steps and encoding with float32 against bfloat16 "
                                                 "matmul operands (model.matmul_dtype), alternating in one process")
    matmul.add_argument("--steps", type=int, default=4, help="timed steps per objective and round")
    matmul.add_argument("--rounds", type=int, default=2)
    matmul.add_argument("--batch-size", type=int, default=32)
    seqrec = sub.add_parser("seqrec-step", help="a seqrec stage's training step (default: the quickstart's SASRec on "
                                                "ID items), this checkout against another, alternating processes")
    seqrec.add_argument("--config", default="configs/quickstart.yaml", help="a pipeline config, relative to each tree")
    seqrec.add_argument("--stage", default="sasrec_id", help="its seqrec stage")
    seqrec.add_argument("--steps", type=int, default=35, help="timed steps per round")
    seqrec.add_argument("--rounds", type=int, default=3)
    seqrec.add_argument("--tree", help="another checkout of jaxrec to time alongside (e.g. the commit before a change)")
    align = sub.add_parser("align-targets", help="LLMEmb's RAT: target positions per training batch of a "
                                                 "pipeline's seqrec stage, and how often its cap on them binds")
    align.add_argument("--config", required=True, help="a pipeline config")
    align.add_argument("--stage", required=True, help="its seqrec stage with LLM items")
    align.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override the pipeline, e.g. data.name=DIR")
    probe = sub.add_parser("probe", help="linear probes: how much of a trained ID recommender's item vectors (and "
                                         "of the items' popularity) frozen item matrices predict, on held-out items")
    probe.add_argument("--id-run", required=True, help="a finished seqrec run with recommender.items.kind: id")
    probe.add_argument("--embeddings", nargs="+", required=True, help="encode run directories or .npy files")
    probe.add_argument("--conditioning", default="standardize",
                       choices=CONDITIONINGS,
                       help="applied to each matrix first, as recommender.items.conditioning (default: standardize)")
    probe.add_argument("--seed", type=int, help="the ID run's seed to probe (default: its first)")
    probe.add_argument("--folds", type=int, default=5, help="cross-validation folds over the items (default: 5)")
    probe.add_argument("--write-floor", metavar="DIR", help="also save the Gaussian matrix there (item_embeddings.npy "
                                                            "+ item_ids.json), moved and scaled to the first --embeddings' "
                                                            "mean row and spread, to train a recommender on it as a control")
    args = parser.parse_args(argv)
    reuse_host_buffers()  # as jaxrec.launch does, so the timings are the launcher's
    log = lambda message: print(f"[bench {args.bench}] {message}", file=sys.stderr, flush=True)
    if args.bench == "encode":
        from jaxrec.bench.encode import run

        result = run(args.model, args.data, args.batch_size, log=log)
    elif args.bench == "train":
        from jaxrec.bench.train import run

        result = run(args.batch_size, args.steps, log=log)
    elif args.bench == "profile":
        from jaxrec.bench.profile import run

        result = run(args.objective, args.layout, args.batch_size, args.steps, args.top, args.trace_dir, log=log)
    elif args.bench == "mesh":
        from jaxrec.bench.mesh import run

        result = run(args.batch_size, args.steps, log=log)
    elif args.bench == "step":
        from jaxrec.bench.step import run

        result = run(args.shape, args.dtype, args.batch_size, args.length, args.steps, args.peak_tflops, log=log)
    elif args.bench == "data":
        from jaxrec.bench.data import run

        result = run(args.path, log=log)
    elif args.bench == "xla-cpu":
        from pathlib import Path

        from jaxrec.bench import xla_cpu

        if args.child:
            xla_cpu.child(args.child, Path(args.out), args.steps, args.seconds)
            return 0
        result = xla_cpu.run(args.variants or list(xla_cpu.VARIANTS), args.rounds, args.steps, args.seconds, log=log)
    elif args.bench == "jobs":
        from jaxrec.bench import jobs as jobs_bench

        result = jobs_bench.run(args.jobs or list(jobs_bench.JOBS), args.save, args.against, log=log, tree=args.tree)
    elif args.bench == "llmemb-step":
        from jaxrec.bench.llmemb_step import run

        result = run(args.data, args.steps, args.rounds, log=log)
    elif args.bench == "matmul-dtype":
        from jaxrec.bench.matmul_dtype import run

        result = run(args.steps, args.rounds, args.batch_size, log=log)
    elif args.bench == "seqrec-step":
        from jaxrec.bench.seqrec_step import run

        result = run(args.config, args.stage, args.steps, args.rounds, args.tree, log=log)
    elif args.bench == "align-targets":
        from jaxrec.bench.align_targets import run

        result = run(args.config, args.stage, args.overrides, log=log)
    elif args.bench == "llmsrec-step":
        from jaxrec.bench.llmsrec_step import run

        result = run(args.steps, args.rounds, log=log)
    elif args.bench == "recbole":
        from jaxrec.bench.sasrec_recbole import run

        sides = (args.only,) if args.only else ("jaxrec", "recbole")
        result = run(args.seeds, args.max_epochs, args.work_dir, sides, args.overrides, log=log)
    elif args.bench == "probe":
        from jaxrec.bench.probe import run

        result = run(args.id_run, args.embeddings, args.conditioning, args.seed, args.folds, args.write_floor, log=log)
    elif args.bench == "recommend":
        from jaxrec.bench.recommend import run

        result = run(args.run, args.requests, args.batch_users, add_items=args.add_items, log=log)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
