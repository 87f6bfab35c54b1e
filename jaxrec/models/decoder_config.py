"""Decoder configuration, built from a Hugging Face ``config.json``.

One dataclass covers every family of ``jaxrec.models.families`` (LLaMA, Qwen2, Qwen3). Anything in the source
config that would change the model's math and that jaxrec does not implement
is an error that names the field, never a silent approximation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrec.models.families import FAMILIES, family
from jaxrec.models.layers import LoraSpec

SUPPORTED_ROPE_TYPES = ("default", "llama3")
REMAT_POLICIES = {
    "matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
}
"""``DecoderConfig.remat`` -> the policy its layers are rematerialised with (None: not at all)."""


class UnsupportedConfigError(ValueError):
    """A model config asks for something jaxrec does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3.x frequency scaling (``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    """RMSNorm over each head's query and key before RoPE (Qwen3)."""
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Runtime choices, not part of the checkpoint.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_dropout: float = 0.0
    matmul_dtype: str | None = None
    """The dtype the projections' and MLP's operands are rounded to for their
    products, which are accumulated and returned in ``dtype`` (None: ``dtype``).
    "bfloat16" under a float32 ``dtype`` is mixed precision as TPUs and GPU
    autocast run it: norms, attention, the LM head and LoRA stay float32. On CPUs
    with AVX512-BF16 (AMD Zen 4, Intel Sapphire Rapids) XLA:CPU runs these
    products about twice as fast as float32 ones."""
    remat: str = "matmuls"
    """What each layer keeps for the backward pass. "matmuls": the outputs of the
    projections and the MLP's matmuls; norms, RoPE, attention and SiLU are
    recomputed from them (measured fastest for LoRA steps on CPU: fewer
    activations written and read back). "none": everything the autodiff keeps.
    "full": only the layer's input, the whole layer recomputed (least memory)."""
    lora: LoraSpec | None = None
    extra_tokens: int = 0
    """New input-only token embeddings at ids vocab_size .. vocab_size + extra_tokens - 1."""

    def __post_init__(self):
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise UnsupportedConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")

    def replace(self, **changes) -> "DecoderConfig":
        return dataclasses.replace(self, **changes)

    def rope_inv_freq(self) -> np.ndarray:
        """Inverse RoPE frequencies [head_dim // 2], float32, as HF computes them."""
        exponents = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32) / self.head_dim
        inv_freq = (1.0 / (np.float32(self.rope_theta) ** exponents)).astype(np.float32)
        if self.rope_scaling is not None:
            inv_freq = _llama3_scale(inv_freq, self.rope_scaling)
        return inv_freq


def _llama3_scale(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama-3.x scaling: slow frequencies divided by ``factor``, fast ones kept,
    a smooth blend in between."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, blended, scaled).astype(np.float32)


def _rope_settings(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """Read rope settings from transformers 5.x ``rope_parameters`` or 4.x
    top-level ``rope_theta`` / ``rope_scaling``."""
    params = hf.get("rope_parameters")
    if params is not None:
        field = "rope_parameters"
        if not isinstance(params, dict):
            raise UnsupportedConfigError(f"{source}: {field} must be a mapping, got {params!r}")
        if "rope_type" not in params and all(isinstance(v, dict) for v in params.values()):
            raise UnsupportedConfigError(
                f"{source}: per-layer-type {field} ({sorted(params)}) are not supported"
            )
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = params
    else:
        field = "rope_scaling"
        theta = hf.get("rope_theta", 10000.0)
        scaling = hf.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedConfigError(
            f"{source}: {field}.rope_type={rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return float(theta), None
    try:
        return float(theta), RopeScaling(
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
        )
    except KeyError as err:
        raise UnsupportedConfigError(f"{source}: {field} for llama3 lacks {err.args[0]!r}") from None


def _reject(source: str, field: str, value: Any, why: str) -> None:
    raise UnsupportedConfigError(f"{source}: {field}={value!r} is not supported: {why}")


def _check_supported(hf: dict[str, Any], source: str) -> str:
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        _reject(source, "model_type", model_type, f"jaxrec implements {', '.join(FAMILIES)}")
    if hf.get("hidden_act", "silu") != "silu":
        _reject(source, "hidden_act", hf["hidden_act"], "only the SwiGLU (silu) MLP is implemented")
    if hf.get("mlp_bias", False):
        _reject(source, "mlp_bias", True, "MLP projections without bias only")
    if hf.get("use_sliding_window", False):
        _reject(source, "use_sliding_window", True, "sliding-window attention is not implemented")
    layer_types = hf.get("layer_types") or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        _reject(source, "layer_types", other, "only full_attention layers are implemented")
    return model_type


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def config_from_hf_dict(hf: dict[str, Any], source: str = "config.json", **runtime) -> DecoderConfig:
    model_type = _check_supported(hf, source)
    try:
        hidden = int(hf["hidden_size"])
        heads = int(hf["num_attention_heads"])
        theta, scaling = _rope_settings(hf, source)
        return DecoderConfig(
            model_type=model_type,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            rope_theta=theta,
            rope_scaling=scaling,
            **family(model_type).config_fields(hf),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            bos_token_id=_first_id(hf.get("bos_token_id")),
            eos_token_id=_first_id(hf.get("eos_token_id")),
            pad_token_id=_first_id(hf.get("pad_token_id")),
            attention_dropout=float(hf.get("attention_dropout", 0.0) or 0.0),
            **runtime,
        )
    except KeyError as err:
        raise UnsupportedConfigError(f"{source}: required field {err.args[0]!r} is missing") from None


def load_hf_config(model_dir: str | Path, **runtime) -> DecoderConfig:
    path = Path(model_dir) / "config.json"
    try:
        hf = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: a Hugging Face model directory needs a config.json") from None
    except json.JSONDecodeError as err:
        raise UnsupportedConfigError(f"{path} is not valid JSON: {err}") from None
    return config_from_hf_dict(hf, source=str(path), **runtime)


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    """An HF ``config.json`` for ``config``; :func:`config_from_hf_dict` reads it
    back to the same config. Added tokens become ordinary vocabulary rows. The
    rope settings are written both as transformers 5.x ``rope_parameters`` and
    as 4.x top-level fields, so either version loads the file."""
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope = {"rope_type": "llama3", "rope_theta": config.rope_theta, **dataclasses.asdict(config.rope_scaling)}
    own = family(config.model_type)
    hf = {
        "architectures": [own.ARCHITECTURE],
        "model_type": config.model_type,
        "vocab_size": config.vocab_size + config.extra_tokens,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_scaling is None else {k: v for k, v in rope.items() if k != "rope_theta"},
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "attention_dropout": 0.0,
        "torch_dtype": config.param_dtype,
    }
    try:
        hf.update(own.hf_fields(config))
    except ValueError as err:
        raise UnsupportedConfigError(str(err)) from None
    return hf
