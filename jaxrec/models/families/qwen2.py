"""Qwen2: biases on q, k and v (never o); RMSNorm eps 1e-6 by default."""

from __future__ import annotations

from jaxrec.models.families.core import attention_bias_rules, core_rules

MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"


def config_fields(hf: dict) -> dict:
    return {"qkv_bias": True, "o_bias": False, "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6))}


def rules(config) -> list:
    return core_rules(config) + attention_bias_rules(config)


def hf_fields(config) -> dict:
    return {"use_sliding_window": False}
