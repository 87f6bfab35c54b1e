"""Benchmark: how many target positions LLMEmb's RAT has to align in a training batch
of a pipeline's seqrec stage, drawn as the step draws them (BERT4Rec masks its targets
inside the step), over one epoch of batches; with the stage's ``alignment.max_items``,
how often that cap binds and what share of the targets it aligns. Where it never binds,
the capped loss is the uncapped one (tests/test_llmemb.py). The frozen matrix is random:
the batches do not depend on it.

    python -m jaxrec.bench align-targets --config configs/llmemb/smollm2_beauty_other_backbones.yaml \\
        --stage llmemb_bert4rec
"""

from __future__ import annotations

import numpy as np


def run(config_path: str, stage: str, overrides: list[str], seed: int = 0, log=print) -> dict:
    import jax

    from jaxrec.bench.llmemb_step import setup_on_random_items
    from jaxrec.pipelines.config import load_pipeline, stage_config
    from jaxrec.seqrec.recommender import Recommender, init_variables

    config = stage_config(load_pipeline(config_path, overrides), stage)
    if not config.recommender.items.uses_llm:
        raise SystemExit(f"{config_path}: stage {stage} has ID items; RAT aligns LLM items")
    dataset = config.data.load(config.seed, log)
    rng = np.random.default_rng(seed)
    setup = setup_on_random_items(config, dataset, config.recommender.items.pca or 16, rng)
    variables = init_variables(setup.model, jax.random.key(seed), setup.llm_items, None)
    size, order = config.batch.size, rng.permutation(setup.count)
    counts = []
    for start in range(0, len(order), size):
        batch = setup.batch(order[start:start + size], rng)
        _, targets = setup.model.apply(variables, jax.random.key(start), batch, method=Recommender.training_inputs)
        counts.append(int(np.count_nonzero(np.asarray(targets))))
    counts = np.asarray(counts)
    cap = config.recommender.alignment.max_items
    result = {"config": config_path, "stage": stage, "batches": len(counts), "batch_size": size,
              "positions_per_batch": size * config.recommender.backbone.max_history,
              "targets_mean": round(float(counts.mean()), 1), "targets_median": float(np.median(counts)),
              "targets_max": int(counts.max()), "cap": cap}
    log(f"{len(counts)} batches of {size}: {counts.mean():.0f} targets on average (median {np.median(counts):.0f}, "
        f"at most {counts.max()}) of {result['positions_per_batch']} positions")
    if cap is not None:
        result["cap_binds_share"] = round(float(np.mean(counts > cap)), 4)
        result["aligned_share"] = round(float(np.minimum(counts, cap).sum() / counts.sum()), 4)
        log(f"a cap of {cap} binds in {result['cap_binds_share']:.1%} of the batches and aligns "
            f"{result['aligned_share']:.1%} of the targets")
    return result
