"""A fast tokenizer rebuilt from GGUF metadata with the ``tokenizers`` library,
so GGUF models need no PyTorch (transformers' own GGUF path imports torch).

Covers byte-level BPE vocabularies (``tokenizer.ggml.model = gpt2``), the kind
used by SmolLM2, Llama-3 and Qwen2 GGUF files.
"""

from __future__ import annotations

import gguf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers import AddedToken

from jaxrec.models.sources import CheckpointError

_SPECIAL_TYPES = (int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED))


def _field(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def tokenizer_from_gguf_metadata(reader: gguf.GGUFReader, origin: str):
    from jaxrec.models.transformers_lib import import_transformers

    PreTrainedTokenizerFast = import_transformers().PreTrainedTokenizerFast

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(
            f"{origin}: tokenizer.ggml.model={kind!r} is not supported (byte-level BPE 'gpt2' is); "
            "pass tokenizer=PATH with an HF tokenizer directory instead"
        )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(merge.split(" ", 1)) for merge in _field(reader, "tokenizer.ggml.merges", [])]
    token_types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))

    backend = Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False)
    )
    add_prefix_space = bool(_field(reader, "tokenizer.ggml.add_space_prefix", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(token_types) if t in _SPECIAL_TYPES]
    )

    def token(key: str) -> str | None:
        index = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[int(index)]

    bos, eos = token("bos"), token("eos")
    template = "$A"
    if _field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
        template = f"{bos} {template}"
    if _field(reader, "tokenizer.ggml.add_eos_token", False) and eos is not None:
        template = f"{template} {eos}"
    specials = [(t, tokens.index(t)) for t in {bos, eos} if t is not None and t in template]
    backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=token("unknown"),
        pad_token=token("padding"),
        model_max_length=int(_field(reader, "llama.context_length", 2048)),
    )
