"""Tokenizers from an HF model directory or from a GGUF file.

Building a tokenizer from GGUF metadata takes a few seconds, so the result is saved
under ``$JAXREC_CACHE/tokenizers/<file sha256>`` and later loads read that.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from jaxrec.assets import cache_root
from jaxrec.errors import DataError
from jaxrec.models.transformers_lib import import_transformers
from jaxrec.io import atomic_dir, sha256_file

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).exists() for name in _TOKENIZER_FILES)


# Bumped when the GGUF conversion changes, so stale cached tokenizers are not reused.
_GGUF_TOKENIZER_VERSION = "v1"

_GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


class TokenizerError(DataError):
    """Tokenizer files that exist but do not load."""


def readable(load):
    """Decorate a tokenizer loader whose first argument is its path: any failure to read
    the files becomes a :class:`TokenizerError` that names them."""

    @functools.wraps(load)
    def wrapper(path, *args, **kwargs):
        try:
            return load(path, *args, **kwargs)
        except TokenizerError:
            raise
        except Exception as err:  # tokenizers, json, sentencepiece and transformers each raise their own
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise TokenizerError(f"the tokenizer at {path} does not load ({type(err).__name__}: {first})") from None

    return wrapper


@readable
def tokenizer_from_dir(model_dir: str | Path):
    transformers = import_transformers()
    config_path = Path(model_dir) / "tokenizer_config.json"
    saved_class = json.loads(config_path.read_text()).get("tokenizer_class") if config_path.exists() else None
    if saved_class in _GENERIC_CLASSES:
        # AutoTokenizer would follow config.json's model_type and rebuild a
        # family tokenizer instead of the tokenizer.json that was saved.
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    return transformers.AutoTokenizer.from_pretrained(str(model_dir))


@readable
def tokenizer_from_gguf(gguf_path: str | Path, reader=None):
    """``reader``: an open ``gguf.GGUFReader`` of the file, to avoid parsing its
    metadata (seconds for a large vocabulary) a second time."""
    import gguf

    from jaxrec.models.gguf_tokenizer import tokenizer_from_gguf_metadata

    gguf_path = Path(gguf_path)
    digest = sha256_file(gguf_path)
    cached = cache_root() / "tokenizers" / f"{digest[:24]}-{_GGUF_TOKENIZER_VERSION}"
    if has_tokenizer(cached):
        return tokenizer_from_dir(cached)
    import_transformers()
    tokenizer = tokenizer_from_gguf_metadata(reader or gguf.GGUFReader(gguf_path), str(gguf_path))
    with atomic_dir(cached) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return tokenizer
