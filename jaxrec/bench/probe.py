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
from jaxrec.seqrec.probe import gaussian_matrix
from jaxrec.seqrec.spec import ItemsSpec
from jaxrec.tasks.seqrec import SeqrecConfig, frozen_item_table, id_probe_targets


def like_rows(noise: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``noise`` moved to the mean row of ``rows`` and scaled to their mean distance from it, so that a
    recommender that reads a matrix as extracted (conditioning: none) sees noise of the embeddings' scale."""
    rows = np.asarray(rows, np.float64)
    mean = rows.mean(axis=0)
    spread = np.linalg.norm(rows - mean, axis=1).mean() / np.linalg.norm(noise, axis=1).mean()
    return (noise * spread + mean).astype(np.float32)


def run(id_run: str, embeddings: list[str], conditioning: str = "standardize", seed: int | None = None,
        folds: int = 5, write_floor: str | None = None, log=print) -> dict:
    config = runs.open_run(id_run, "--id-run").config(SeqrecConfig)
    if seed is None:
        seed = config.evaluation.seeds[0] if config.evaluation.seeds else config.seed
    data, targets = id_probe_targets(config, id_run, seed)
    item_ids = [str(i) for i in data.item_ids]
    log(f"{len(targets.items)} of {data.num_items} items have training interactions; probing the ID vectors of seed "
        f"{seed} of {id_run} ({targets.vectors.shape[1]} wide) and log(1 + training count), {folds}-fold over items")
    matrices = {location: frozen_item_table(ItemsSpec(kind="llm", embeddings=location, conditioning=conditioning),
                                            item_ids)  # as a recommender with this conditioning reads it
                for location in embeddings}
    width = next(iter(matrices.values())).shape[1]
    other_seeds = [s for s in config.evaluation.seeds if s != seed]
    if other_seeds:
        matrices[f"ID vectors of seed {other_seeds[0]} (the ceiling)"] = runs.item_table(id_run, item_ids, other_seeds[0])
    noise = gaussian_matrix(len(item_ids), width)
    matrices[f"Gaussian noise ({width} wide, the floor)"] = noise
    if write_floor:  # the same noise as an embeddings input, so a recommender can be trained on it as a control
        out = Path(write_floor)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "item_embeddings.npy", like_rows(noise[1:], runs.item_embeddings(embeddings[0], item_ids)[1:]))
        (out / "item_ids.json").write_text(json.dumps(item_ids[1:]))
        log(f"wrote the Gaussian matrix to {out}: give recommender.items.embeddings={out / 'item_embeddings.npy'}")
    rows = []
    for name, matrix in matrices.items():
        probe = targets.score(matrix, folds)
        rows.append({"matrix": name, **{k: round(v, 4) if k.endswith("r2") else v for k, v in probe.items()}})
        log(f"{name}: R^2 ID vectors {probe['id_vectors_r2']:.3f} (lambda {probe['id_vectors_lambda']:g}), "
            f"log count {probe['log_count_r2']:.3f} (lambda {probe['log_count_lambda']:g})")
    return {"id_run": id_run, "seed": seed, "conditioning": conditioning, "items": int(len(targets.items)), "rows": rows}
