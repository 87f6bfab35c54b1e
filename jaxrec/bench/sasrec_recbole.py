"""jaxrec's SASRec against RecBole 1.2.1's on ml-100k, same split, history,
sizes, dropout, loss, learning rate and early stopping (configs/sasrec_ml100k.yaml
is jaxrec's side; recbole_runner.py holds RecBole's).

RecBole lives in its own virtual environment (created on first use with
torch 2.13.0, setuptools<70, pandas<2.2, numpy<2; RecBole itself installed
without its pinned dependencies), never in jaxrec's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RUNNER = Path(__file__).with_name("recbole_runner.py")
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sasrec_ml100k.yaml"
REQUIREMENTS = [
    "torch==2.13.0", "setuptools<70", "pandas<2.2", "numpy<2", "scipy", "scikit-learn", "colorlog", "colorama",
    "tqdm", "tabulate", "texttable", "psutil", "thop", "pyyaml", "tensorboard",
]


def recbole_python(venv: Path, log=print) -> Path:
    """The interpreter of a virtual environment with RecBole, made if missing."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import recbole, torch; assert recbole.__version__ == '1.2.1'"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    log(f"creating {venv} with RecBole 1.2.1 (once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [r for r in REQUIREMENTS if not r.startswith("setuptools")], check=True)
    # torch declares a newer setuptools than RecBole's pkg_resources use tolerates; pin it after
    subprocess.run(pip + ["--no-deps", "setuptools<70"], check=True)
    subprocess.run(pip + ["--no-deps", "recbole==1.2.1"], check=True)
    subprocess.run(probe, check=True)
    return python


def _summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "runs": [round(v, 4) for v in values]}


def _side(runs: list[dict]) -> dict:
    """Over seeds; each run has ``test`` metrics, ``seconds_per_epoch`` and ``epochs``."""
    return {
        "ndcg@10": _summary([r["test"]["ndcg@10"] for r in runs]),
        "recall@10": _summary([r["test"]["recall@10"] for r in runs]),
        "seconds_per_epoch": _summary([r["seconds_per_epoch"] for r in runs]),
        "epochs": [r["epochs"] for r in runs],
    }


def run(seeds: list[int], max_epochs: int, work_dir: str, sides: tuple[str, ...] = ("jaxrec", "recbole"),
        overrides: tuple[str, ...] = (), log=print) -> dict:
    work = Path(work_dir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"dataset": "ml-100k", "history": 10, "max_epochs": max_epochs, "seeds": seeds,
                    "jaxrec_overrides": list(overrides)}
    if "recbole" in sides:
        python = recbole_python(work / "recbole-venv", log)
        runs = []
        for seed in seeds:
            log(f"RecBole SASRec, seed {seed}")
            out = subprocess.run([str(python), str(RUNNER), str(seed), str(max_epochs), str(work / "recbole")],
                                 capture_output=True, text=True, cwd=work)
            if out.returncode:
                raise RuntimeError(f"RecBole run failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            log(json.dumps(runs[-1]))
        result["recbole"] = _side(runs)
    if "jaxrec" in sides:
        from jaxrec.run_dir import run_task
        from jaxrec.runtime import split_cpu
        from jaxrec.registry import load_config

        seed_list = "[" + ",".join(str(s) for s in seeds) + "]"
        config = load_config(CONFIG, [f"evaluation.seeds={seed_list}", f"loop.epochs={max_epochs}",
                                      "evaluation.shuffle=false", *overrides])
        split_cpu(config.mesh.cpu_devices)  # as jaxrec.launch does, before JAX starts
        run_dir = work / f"jaxrec-{time.strftime('%Y%m%d-%H%M%S')}"
        config.run_dir = str(run_dir)
        summary = run_task(config, log=log)
        runs = [{"test": r["test"]["full"], **r["training"]} for r in summary["per_seed"]]
        result["jaxrec"] = {**_side(runs), "run_dir": str(run_dir)}
    if "jaxrec" in result and "recbole" in result:
        ours, theirs = result["jaxrec"], result["recbole"]
        result["ndcg@10_relative_difference"] = ours["ndcg@10"]["mean"] / theirs["ndcg@10"]["mean"] - 1
        result["speedup_per_epoch"] = theirs["seconds_per_epoch"]["mean"] / ours["seconds_per_epoch"]["mean"]
    return result
