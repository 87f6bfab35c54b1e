"""LLaMA (1-3.x, SmolLM2): one ``attention_bias`` for q, k, v and o; RMSNorm eps 1e-5 by default."""

from __future__ import annotations

from jaxrec.models.families.core import attention_bias_rules, core_rules

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"


def config_fields(hf: dict) -> dict:
    bias = bool(hf.get("attention_bias", False))
    return {"qkv_bias": bias, "o_bias": bias, "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-5))}


def rules(config) -> list:
    return core_rules(config) + attention_bias_rules(config)


def hf_fields(config) -> dict:
    if config.qkv_bias != config.o_bias:
        raise ValueError("a LLaMA config has one attention_bias for q, k, v and o; "
                         f"this one has qkv_bias={config.qkv_bias}, o_bias={config.o_bias}")
    return {"attention_bias": config.qkv_bias, "mlp_bias": False}
