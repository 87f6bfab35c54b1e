"""Checkpoint files as read-one-tensor-at-a-time sources with HF tensor names.

A source holds no tensor data of its own: each read returns one tensor in a
fresh buffer (safetensors are read with plain file reads, GGUF pages are
released after each tensor), so the converter's resident memory follows the
tensors it is using, not the size of the files.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Protocol

import ml_dtypes
import numpy as np
from einops import rearrange


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, or does not match the model."""


class TensorSource(Protocol):
    def names(self) -> set[str]: ...

    def read(self, name: str) -> np.ndarray: ...

    def where(self, name: str) -> str: ...


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class _SafetensorsFile:
    """Memory-mapped safetensors file with its header validated up front."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", f.read(8))
            if 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: truncated safetensors file (header of {header_len} bytes, file has {size})"
                )
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{path}: corrupt safetensors header: {err}") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self.entries = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            if end > data_len:
                raise CheckpointError(
                    f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end} "
                    f"of the data section, which has only {data_len} bytes"
                )
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
            self.entries[name] = (np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]), tuple(info["shape"]), begin, end)

    def read(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self.entries[name]
        return np.fromfile(self.path, dtype=dtype, count=(end - begin) // dtype.itemsize,
                           offset=self._data_start + begin).reshape(shape)


class SafetensorsSource:
    """An HF model directory: ``model.safetensors`` or shards listed in
    ``model.safetensors.index.json``."""

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        single = model_dir / "model.safetensors"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: not a valid safetensors index ({err})") from None
            shard_names = sorted(set(weight_map.values()))
        elif single.exists():
            shard_names = [single.name]
            weight_map = None
        else:
            raise CheckpointError(
                f"{model_dir}: no model.safetensors or model.safetensors.index.json "
                "(only safetensors checkpoints are read; convert .bin files with transformers first)"
            )
        self._files = {}
        for shard in shard_names:
            path = model_dir / shard
            if not path.exists():
                raise CheckpointError(f"{index}: lists shard {shard}, which does not exist")
            self._files[shard] = _SafetensorsFile(path)
        self._owner = {}
        for shard, file in self._files.items():
            for name in file.entries:
                self._owner[name] = file
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in self._files[shard].entries:
                    raise CheckpointError(f"{index}: maps {name!r} to {shard}, which does not contain it")

    def names(self) -> set[str]:
        return set(self._owner)

    def read(self, name: str) -> np.ndarray:
        return self._owner[name].read(name)

    def where(self, name: str) -> str:
        return str(self._owner[name].path)


def _unpermute_for_rotate_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved -> split-half RoPE)."""
    return rearrange(w, "(h half two) ... -> (h two half) ...", h=n_heads, two=2)


_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_name_for_gguf(name: str) -> str | None:
    if name in _GGUF_GLOBAL_NAMES:
        return _GGUF_GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}"
    return None


class GGUFSource:
    """A llama.cpp GGUF file with LLaMA architecture, exposed with HF names and
    layouts: every quantization type the ``gguf`` package knows is dequantized
    to float32 and q/k rows are un-permuted."""

    def __init__(self, path: str | Path):
        import gguf

        self.path = Path(path)
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as err:  # the reader raises plain ValueError/IndexError on truncation
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
        self.metadata = {}
        for key, field in self.reader.fields.items():
            if key.startswith("tokenizer.ggml.") and key not in _GGUF_TOKEN_ID_KEYS:
                continue
            try:
                self.metadata[key] = field.contents()
            except Exception:
                continue
        arch = self.metadata.get("general.architecture")
        if arch != "llama":
            raise CheckpointError(
                f"{self.path}: general.architecture={arch!r} is not supported (GGUF loading covers 'llama')"
            )
        self._tensors = {}
        self._unknown = []
        for tensor in self.reader.tensors:
            hf = _hf_name_for_gguf(tensor.name)
            if hf is None:
                self._unknown.append(tensor.name)
            else:
                self._tensors[hf] = tensor
        self._gguf = gguf

    def hf_config(self) -> dict:
        """The model's config in HF ``config.json`` terms, from GGUF metadata."""
        m = self.metadata
        unsupported = {
            "llama.rope.scaling.type": lambda v: v not in (None, "none"),
            "llama.expert_count": lambda v: bool(v),
        }
        for key, bad in unsupported.items():
            if bad(m.get(key)):
                raise CheckpointError(f"{self.path}: GGUF field {key}={m[key]!r} is not supported")
        if "rope_freqs.weight" in self._unknown:
            raise CheckpointError(
                f"{self.path}: tensor rope_freqs.weight (Llama-3 RoPE factors in GGUF) is not supported; "
                "load the model from its HF safetensors directory instead"
            )
        try:
            heads = int(m["llama.attention.head_count"])
            hidden = int(m["llama.embedding_length"])
            config = {
                "model_type": "llama",
                "vocab_size": int(m.get("llama.vocab_size") or self._tensors["model.embed_tokens.weight"].shape[-1]),
                "hidden_size": hidden,
                "intermediate_size": int(m["llama.feed_forward_length"]),
                "num_hidden_layers": int(m["llama.block_count"]),
                "num_attention_heads": heads,
                "num_key_value_heads": int(m.get("llama.attention.head_count_kv", heads)),
                "head_dim": int(m.get("llama.attention.key_length", hidden // heads)),
                "rms_norm_eps": float(m["llama.attention.layer_norm_rms_epsilon"]),
                "rope_theta": float(m.get("llama.rope.freq_base", 10000.0)),
                "max_position_embeddings": int(m.get("llama.context_length", 4096)),
                "tie_word_embeddings": "lm_head.weight" not in self._tensors,
                "attention_bias": "model.layers.0.self_attn.q_proj.bias" in self._tensors,
            }
        except KeyError as err:
            raise CheckpointError(f"{self.path}: GGUF metadata lacks {err.args[0]!r}") from None
        for hf_key, gguf_key in _GGUF_TOKEN_ID_KEYS.items():
            if gguf_key in m:
                config[hf_key] = int(m[gguf_key])
        return config

    def has_tokenizer(self) -> bool:
        return "tokenizer.ggml.model" in self.reader.fields

    def names(self) -> set[str]:
        return set(self._tensors) | set(self._unknown)

    def read(self, name: str) -> np.ndarray:
        tensor = self._tensors[name]
        try:
            values = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as err:
            raise CheckpointError(
                f"{self.path}: tensor {tensor.name} uses quantization {tensor.tensor_type.name}, "
                f"which the gguf package cannot dequantize ({err})"
            ) from None
        values = np.asarray(values, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))
        self._release_pages()
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            values = _unpermute_for_rotate_half(values, int(self.metadata["llama.attention.head_count"]))
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            heads_kv = self.metadata.get("llama.attention.head_count_kv", self.metadata["llama.attention.head_count"])
            values = _unpermute_for_rotate_half(values, int(heads_kv))
        return values

    def _release_pages(self) -> None:
        """Drop the file pages the last read touched from this process's
        resident memory (they stay in the page cache)."""
        file_map = getattr(self.reader.data, "_mmap", None)
        if file_map is not None and hasattr(mmap, "MADV_DONTNEED"):
            file_map.madvise(mmap.MADV_DONTNEED)

    def where(self, name: str) -> str:
        tensor = self._tensors.get(name)
        return f"{self.path} (tensor {tensor.name})" if tensor is not None else str(self.path)


_GGUF_TOKEN_ID_KEYS = {
    "bos_token_id": "tokenizer.ggml.bos_token_id",
    "eos_token_id": "tokenizer.ggml.eos_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
}
