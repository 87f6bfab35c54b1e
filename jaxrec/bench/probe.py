"""Linear probes of frozen item matrices (see :mod:`jaxrec.seqrec.probe`):
for each matrix, the cross-validated R^2 of ridge regressions onto a trained ID
recommender's item vectors and onto the items' log training counts, over the
items that recommender trained on, beside the same probe of a Gaussian matrix of
the same shape (the floor: what fitting noise scores) and, where the ID run
trained several seeds, of another seed's ID vectors (a ceiling: how much of one
training's vectors another training's predict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxrec import runs
from jaxrec.config import build
from jaxrec.seqrec.item_vectors import fit_conditioning
from jaxrec.seqrec.probe import ridge_r2


def _id_run(location: str):
    from jaxrec.tasks.seqrec import SeqrecConfig

    run = runs.open_run(location, "--id-run")
    config = build(SeqrecConfig, {k: v for k, v in run.manifest["config"].items() if k != "run_dir"})
    if run.task != "seqrec" or config.recommender.items != "id":
        raise SystemExit(f"--id-run {location}: expected a finished seqrec run with recommender.items: id")
    return config


def run(id_run: str, embeddings: list[str], conditioning: str = "standardize", seed: int | None = None,
        folds: int = 5, write_floor: str | None = None, log=print) -> dict:
    config = _id_run(id_run)
    data = config.data.load(config.seed, log=lambda *_: None)
    item_ids = [str(i) for i in data.item_ids]
    seed = config.evaluation.seeds[0] if seed is None and config.evaluation.seeds else (seed or config.seed)
    table = runs.item_table(id_run, item_ids, seed)
    counts = np.bincount(np.concatenate(data.train_sequences()), minlength=data.num_items + 1)
    trained = np.flatnonzero(counts > 0)
    trained = trained[trained > 0]
    popularity = np.log1p(counts[trained])
    log(f"{len(trained)} of {data.num_items} items have training interactions; probing the ID vectors of seed {seed} "
        f"of {id_run} ({table.shape[1]} wide) and log(1 + training count), {folds}-fold over items")
    matrices = {location: runs.item_embeddings(location, item_ids) for location in embeddings}
    width = next(iter(matrices.values())).shape[1]
    other_seeds = [s for s in config.evaluation.seeds if s != seed]
    if other_seeds:
        matrices[f"ID vectors of seed {other_seeds[0]} (the ceiling)"] = runs.item_table(id_run, item_ids, other_seeds[0])
    noise = np.random.default_rng(0).normal(size=(len(item_ids), width)).astype(np.float32)
    matrices[f"Gaussian noise ({width} wide, the floor)"] = noise
    if write_floor:  # the same noise as an embeddings input, so a recommender can be trained on it as a control
        out = Path(write_floor)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "item_embeddings.npy", noise[1:])
        (out / "item_ids.json").write_text(json.dumps(item_ids[1:]))
        log(f"wrote the Gaussian matrix to {out}: give recommender.embeddings={out / 'item_embeddings.npy'}")
    rows = []
    for name, matrix in matrices.items():
        features = fit_conditioning(matrix[trained], conditioning)(matrix[trained])
        vectors, counts_fit = ridge_r2(features, table[trained], folds=folds), ridge_r2(features, popularity, folds=folds)
        rows.append({"matrix": name, "id_vectors_r2": round(vectors["r2"], 4), "id_vectors_lambda": vectors["lambda"],
                     "log_count_r2": round(counts_fit["r2"], 4), "log_count_lambda": counts_fit["lambda"]})
        log(f"{name}: R^2 ID vectors {vectors['r2']:.3f} (lambda {vectors['lambda']:g}), "
            f"log count {counts_fit['r2']:.3f} (lambda {counts_fit['lambda']:g})")
    return {"id_run": id_run, "seed": seed, "conditioning": conditioning, "items": int(len(trained)), "rows": rows}
