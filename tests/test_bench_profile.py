"""The step profiler attributes compiled operations' time to the model code they came from."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.bench.profile import hlo_sources, kind_of, operation_times, summarize


def test_kinds_follow_the_model_code_an_operation_came_from():
    lora = "transpose(jvp(Decoder))/while/body/closed_call/layers/mlp/gate/gate._lora_update/dot_general"
    assert kind_of("ynn_fusion.3", lora) == "matmul, LoRA"
    assert kind_of("dot.12", "jvp(Decoder)/embed.attend/dot_general") == "matmul, LM head"
    assert kind_of("ynn_fusion.9", "jvp(Decoder)/while/body/closed_call/layers/mlp/up/dot_general") \
        == "matmul, projections and MLP"
    assert kind_of("bitcast_dynamic-update-slice_fusion.1", "") == "layer scan: saving activations for the backward"
    assert kind_of("copy_bitcast_fusion.5", "transpose(jvp(Decoder))/layers/mlp/jit(silu)") \
        == "layout copies and transposes"
    assert kind_of("add_divide_fusion", "jvp(Decoder)/layers/mlp/jit(silu)/div").startswith("elementwise")


def test_a_traced_program_s_matmul_is_found_and_attributed(tmp_path):
    @jax.jit
    def layer(x, w):
        return jnp.tanh(x @ w)

    x = jnp.asarray(np.random.default_rng(0).standard_normal((512, 512)), jnp.float32)
    jax.block_until_ready(layer(x, x))
    with jax.profiler.trace(str(tmp_path)):
        for _ in range(3):
            out = layer(x, x)
        jax.block_until_ready(out)
    times = operation_times(tmp_path)
    sources = hlo_sources(layer.lower(x, x).compile().as_text())
    summary = summarize(times, sources, steps=3, top=5)

    assert any(op["source"].endswith("dot_general") and op["shape"].startswith("f32[512,512]")
               for op in summary["top_ops"]), summary["top_ops"]
    kinds = {row["kind"]: row for row in summary["by_kind"]}
    assert kinds["matmul, projections and MLP"]["ms_per_step"] > 0
    assert abs(sum(row["share"] for row in summary["by_kind"]) - 1.0) < 0.01
