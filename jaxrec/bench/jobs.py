"""Benchmark: a fixed small version of each real job (the quickstart, LLMEmb on
Beauty, LLM-SRec on ml-100k: every stage, a few steps or epochs each), run with
the launcher in a fresh process as a user runs it, compilation included (the
compilation cache is off, so every run compiles alike). Prints each stage's
seconds beside those a previous run saved, so a regression shows; then saves
this run's.

    python -m jaxrec.bench jobs                      # all three, compared with the last saved run
    python -m jaxrec.bench jobs --tree ../old-checkout --save before.json   # the same jobs on other code
    python -m jaxrec.bench jobs --save after.json --against before.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

JOBS = {
    "quickstart": ("configs/quickstart.yaml", [
        "stages.csft.loop.steps=4", "stages.mntp.loop.steps=4", "stages.contrastive.loop.steps=4",
        *(f"stages.{s}.loop.epochs=2" for s in ("sasrec_id", "sasrec_untrained", "sasrec_llm2rec", "sasrec_id_llm2rec")),
        *(f"stages.{s}.evaluation.seeds=[0]" for s in ("sasrec_id", "sasrec_untrained", "sasrec_llm2rec",
                                                        "sasrec_id_llm2rec")),
    ]),
    "llmemb": ("configs/llmemb/quick_beauty.yaml", [
        "data.sample_items=1500", "stages.scft.loop.steps=4", "stages.sasrec_id.loop.epochs=2",
        "stages.llmemb.loop.epochs=2",
    ]),
    "llmsrec": ("configs/llmsrec/quick_ml100k.yaml", [
        "stages.teacher.loop.epochs=5",
    ]),
}
"""Each job: its shipped config and the overrides that make it small (fixed, so runs compare)."""


def default_record() -> Path:
    from jaxrec.runtime import machine_fingerprint

    return ROOT / "runs" / "bench-jobs" / f"{machine_fingerprint()}.json"


def run_job(name: str, scratch: Path, log, tree: Path = ROOT) -> dict:
    """One job launched from ``tree`` (a checkout of jaxrec: its code and its configs)."""
    config, overrides = JOBS[name]
    run_dir = scratch / name
    command = [sys.executable, "-m", "jaxrec.launch", "--config", str(tree / config), "--set", f"run_dir={run_dir}"]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "JAXREC_COMPILATION_CACHE": "off"}
    log(f"{name}: {' '.join(command[3:])}")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)  # -m imports from cwd first
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"bench job {name} failed (exit {done.returncode}):\n{tail}")
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    return {"wall_seconds": round(wall, 1),
            "stages": {stage["name"]: stage["seconds"] for stage in stages if "seconds" in stage}}


def comparison(previous: dict | None, current: dict) -> list[str]:
    """Markdown rows: job, stage, previous seconds, now, now / previous."""
    rows = ["| job | stage | previous s | now s | ratio |", "|---|---|---:|---:|---:|"]
    for job, measured in current["jobs"].items():
        before = (previous or {}).get("jobs", {}).get(job, {})
        entries = [*measured["stages"].items(), ("(whole job)", measured["wall_seconds"])]
        for stage, seconds in entries:
            old = before.get("wall_seconds") if stage == "(whole job)" else before.get("stages", {}).get(stage)
            ratio = f"{seconds / old:.2f}" if old else ""
            rows.append(f"| {job} | {stage} | {old if old is not None else ''} | {seconds} | {ratio} |")
    return rows


def run(jobs: list[str], save: str | None, against: str | None, log=print, tree: str | None = None) -> dict:
    unknown = sorted(set(jobs) - set(JOBS))
    if unknown:
        raise ValueError(f"unknown job(s) {unknown}; choose from {', '.join(JOBS)}")
    record = Path(save) if save else default_record()
    previous_path = Path(against) if against else record
    previous = json.loads(previous_path.read_text()) if previous_path.exists() else None
    checkout = Path(tree).resolve() if tree else ROOT
    current = {"commit": _commit(checkout), "cpu_count": os.cpu_count(), "jobs": {}}
    with tempfile.TemporaryDirectory(prefix="jaxrec-bench-jobs-") as scratch:
        for name in jobs:
            current["jobs"][name] = run_job(name, Path(scratch), log, checkout)
    for line in comparison(previous, current):
        print(line, file=sys.stderr)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(current, indent=1))
    log(f"saved to {record}" + (f"; compared with {previous_path} (commit {previous.get('commit')})" if previous else ""))
    return current


def _commit(tree: Path) -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return done.stdout.strip() or None
