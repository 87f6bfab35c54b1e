"""Benchmark: one full fine-tuning CSFT step of a model of a published shape
(random weights), in the chosen compute dtype, on every local device: tokens/s
and model FLOPs utilisation against a matmul peak the bench measures on the
same devices in the same dtype (or one given with --peak-tflops, e.g. the
datasheet's dense bfloat16 figure).

    python -m jaxrec.bench step --shape qwen2-0.5b --dtype bfloat16 --batch-size 8 --length 512
"""

from __future__ import annotations

import time

import numpy as np

SHAPES = {
    "qwen2-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                   "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                   "max_position_embeddings": 32768},
    "smollm2-135m": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
                     "max_position_embeddings": 8192},
}
TARGET_TOKENS = 64
"""Tokens per row the loss reads (the next title and its end), at the end of each row."""


def run(shape: str, dtype: str, batch_size: int, length: int, steps: int, peak_tflops: float | None,
        log=print) -> dict:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxrec.bench.flops import decoder_forward_flops, matmul_peak
    from jaxrec.models.decoder import Decoder
    from jaxrec.models.decoder_config import config_from_hf_dict
    from jaxrec.methods.llm2rec import csft
    from jaxrec.methods.llm2rec.csft import target_positions
    from jaxrec.train.loop import LoopSpec
    from jaxrec.train import mesh as mesh_lib
    from jaxrec.train.mesh import MeshSpec
    from jaxrec.train.optim import OptimizerSpec
    from jaxrec.train.session import TrainingSession

    config = config_from_hf_dict(SHAPES[shape], source=shape, dtype=dtype, param_dtype="float32")
    session = TrainingSession(MeshSpec(), OptimizerSpec(1e-5, decay="constant"), LoopSpec(steps=1000))
    model = Decoder(config)
    shardings = session.param_shardings(config)
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, jnp.zeros((1, 8), jnp.int32)))["params"],
                   out_shardings=shardings)
    params = init(jax.random.key(0))
    engine = session.engine(model, session.place(model, params), csft.make_loss(model), ("^params/",), 1)
    del params
    rows = -(-batch_size // session.batch_rows) * session.batch_rows  # a multiple of the batch devices
    rng = np.random.default_rng(0)
    target = np.zeros((rows, length), np.int32)
    target[:, -TARGET_TOKENS:] = 1
    mask = np.ones((rows, length), np.int32)
    groups = mesh_lib.local_batch_devices(engine.mesh, engine.batch_axes)
    target_rows, target_columns, valid = target_positions(target, mask, groups)
    batches = [{"input_ids": rng.integers(3, config.vocab_size, (rows, length)).astype(np.int32),
                "attention_mask": mask, "target_mask": target, "target_rows": target_rows,
                "target_columns": target_columns, "target_valid": valid} for _ in range(steps + 1)]
    log(f"{shape} ({dtype} compute, float32 weights, full fine-tuning) on {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s); {rows} x {length} tokens per step")
    jax.block_until_ready(engine.train_step(batches[0]))  # compile
    start = time.perf_counter()
    for batch in batches[1:]:
        metrics = engine.train_step(batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    tokens = rows * length
    # forward, then backward for activations and weights: 3x the forward matmuls; the head at the targets
    flops = 3 * (decoder_forward_flops(config, [length] * rows)
                 + 2 * config.hidden_size * config.vocab_size * int(valid.sum()))
    if peak_tflops is None:
        big = ((4096, 4096, 4096), (8192, 896, 4864)) if jax.devices()[0].platform != "cpu" else (
            (2048, 576, 1536), (1024, 1024, 1024))
        peak_tflops = matmul_peak(dtype=dtype, shapes=big)["gflops"] * jax.device_count() / 1e3
        peak_source = "measured"
    else:
        peak_source = "given"
    achieved = flops / seconds / 1e12
    return {"bench": "step", "shape": shape, "dtype": dtype, "devices": jax.device_count(),
            "platform": jax.devices()[0].platform, "tokens_per_step": tokens, "step_s": round(seconds, 4),
            "tokens_per_s": round(tokens / seconds, 1), "model_tflops_per_s": round(achieved, 3),
            "peak_tflops": round(peak_tflops, 3), "peak": peak_source, "mfu": round(achieved / peak_tflops, 3),
            "loss": float(metrics["loss"])}
