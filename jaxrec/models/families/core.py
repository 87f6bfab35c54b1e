"""The conversion rules every family shares: embeddings, norms, the attention
and SwiGLU projections and, when untied, the output head."""

from __future__ import annotations

from jaxrec.models.rules import TRANSPOSE, Rule, split_heads_bias, split_heads_in, split_heads_out

LAYER = "model.layers.{layer}."


def core_rules(config) -> list[Rule]:
    h, kv = config.num_heads, config.num_kv_heads
    rules = [
        Rule("model.embed_tokens.weight", ("embed", "embedding")),
        Rule("model.norm.weight", ("final_norm", "scale")),
        Rule(LAYER + "input_layernorm.weight", ("layers", "input_norm", "scale")),
        Rule(LAYER + "post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale")),
        Rule(LAYER + "self_attn.q_proj.weight", ("layers", "attn", "q", "kernel"), split_heads_out(h)),
        Rule(LAYER + "self_attn.k_proj.weight", ("layers", "attn", "k", "kernel"), split_heads_out(kv)),
        Rule(LAYER + "self_attn.v_proj.weight", ("layers", "attn", "v", "kernel"), split_heads_out(kv)),
        Rule(LAYER + "self_attn.o_proj.weight", ("layers", "attn", "o", "kernel"), split_heads_in(h)),
        Rule(LAYER + "mlp.gate_proj.weight", ("layers", "mlp", "gate", "kernel"), TRANSPOSE),
        Rule(LAYER + "mlp.up_proj.weight", ("layers", "mlp", "up", "kernel"), TRANSPOSE),
        Rule(LAYER + "mlp.down_proj.weight", ("layers", "mlp", "down", "kernel"), TRANSPOSE),
    ]
    if not config.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", ("lm_head", "kernel"), TRANSPOSE))
    return rules


def attention_bias_rules(config) -> list[Rule]:
    """Biases of the projections the config gives one (q, k, v and / or o)."""
    rules = []
    if config.qkv_bias:
        for name, heads in (("q", config.num_heads), ("k", config.num_kv_heads), ("v", config.num_kv_heads)):
            rules.append(Rule(LAYER + f"self_attn.{name}_proj.bias", ("layers", "attn", name, "bias"),
                              split_heads_bias(heads)))
    if config.o_bias:
        rules.append(Rule(LAYER + "self_attn.o_proj.bias", ("layers", "attn", "o", "bias")))
    return rules
