"""Qwen3: an RMSNorm over each head's query and key (``q_norm`` / ``k_norm``,
one scale of head_dim shared by the heads) before RoPE; ``attention_bias``
(off in the released models) on q, k, v and o; head_dim set explicitly."""

from __future__ import annotations

from jaxrec.models.families.core import LAYER, attention_bias_rules, core_rules
from jaxrec.models.rules import Rule

MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"


def config_fields(hf: dict) -> dict:
    bias = bool(hf.get("attention_bias", False))
    return {"qkv_bias": bias, "o_bias": bias, "qk_norm": True, "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6))}


def rules(config) -> list:
    norms = [Rule(LAYER + f"self_attn.{name}_norm.weight", ("layers", "attn", f"{name}_norm", "scale"))
             for name in ("q", "k")]
    return core_rules(config) + attention_bias_rules(config) + norms


def hf_fields(config) -> dict:
    return {"attention_bias": config.qkv_bias, "use_sliding_window": False}
