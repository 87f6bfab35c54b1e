"""GGUF loading: tiny LLaMA GGUF files written by the test (permuted q/k,
float and quantized tensors) and the real SmolLM2-135M weights against
transformers' own GGUF loader."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

import jaxrec
from jaxrec.bench import torch_reference
from jaxrec.models.sources import CheckpointError
from tests.conftest import build_torch_model, random_ids

_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _gguf_name(hf: str) -> str:
    if hf in _GGUF_NAMES:
        return _GGUF_NAMES[hf]
    _, _, layer, rest = hf.split(".", 3)
    return f"blk.{layer}.{_GGUF_NAMES[rest]}"


def _permute_for_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model, path, quantize=()):
    """Write ``model`` as a llama.cpp-style GGUF. Tensors whose HF names end with
    one of ``quantize`` are stored as Q8_0; the torch model's copies are
    replaced by their dequantized values so both sides hold the same numbers."""
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_vocab_size(c.vocab_size)
    params = dict(model.named_parameters())
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, param in params.items():
        original = param.detach().numpy().astype(np.float32)
        w = original
        if name.endswith("q_proj.weight"):
            w = _permute_for_interleaved(w, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            w = _permute_for_interleaved(w, c.num_key_value_heads)
        if name.endswith(tuple(quantize)):
            writer.add_tensor(_gguf_name(name), gguf.quants.quantize(w, q8), raw_dtype=q8)
            # Q8_0 blocks run along rows, so quantizing commutes with the row permutation.
            with torch.no_grad():
                param.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(original, q8), q8)))
        else:
            writer.add_tensor(_gguf_name(name), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    "variant,quantize",
    [
        ("llama-tied-gqa", ()),
        ("llama-untied-mha", ()),
        ("llama-tied-gqa", ("mlp.up_proj.weight", "self_attn.k_proj.weight", "embed_tokens.weight")),
    ],
)
def test_tiny_gguf_matches_source_model(tmp_path, variant, quantize):
    model = build_torch_model(variant, intermediate_size=128)  # Q8_0 needs rows in blocks of 32
    write_tiny_gguf(model, tmp_path / "tiny.gguf", quantize)
    lm = jaxrec.load_lm(tmp_path / "tiny.gguf")
    assert lm.tokenizer is None
    assert lm.config.tie_word_embeddings == model.config.tie_word_embeddings
    ids = random_ids(2, 16, seed=5)
    np.testing.assert_allclose(np.asarray(lm.logits(ids)), torch_reference.logits(model, ids), atol=1e-4, rtol=0)


def test_truncated_gguf_is_a_clear_error(tmp_path):
    model = build_torch_model("llama-tied-gqa")
    write_tiny_gguf(model, tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.gguf"):
        jaxrec.load_lm(tmp_path / "cut.gguf")


PROMPTS = [
    "The capital of France is",
    "Toy Story, GoldenEye, Four Rooms, Get Shorty,",
    "def fibonacci(n):",
    "Recommended next movie after The Matrix:",
]


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    lm = jaxrec.load_lm(smollm2_gguf)
    model = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, attn_implementation="eager", dtype=torch.float32
    ).eval()
    return lm, model


def test_smollm2_logits_match_transformers_gguf_loader(smollm2_pair):
    lm, model = smollm2_pair
    assert (lm.config.num_layers, lm.config.hidden_size, lm.config.num_kv_heads) == (30, 576, 3)
    for prompt in PROMPTS:
        ids = np.array([lm.tokenizer(prompt)["input_ids"]])
        expected = torch_reference.logits(model, ids)
        got = np.asarray(lm.logits(ids))
        assert np.abs(got - expected).max() < 1e-3, prompt
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_smollm2_greedy_generation_matches(smollm2_pair):
    lm, model = smollm2_pair
    steps, width = 8, 40
    for prompt in PROMPTS[:2]:
        ids = lm.tokenizer(prompt)["input_ids"]
        expected = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=steps, do_sample=False,
        )[0, len(ids):].tolist()
        tokens = list(ids)
        for _ in range(steps):  # right-padded to a fixed width: one compilation for every step
            row = np.zeros((1, width), np.int32)
            row[0, : len(tokens)] = tokens
            mask = (np.arange(width) < len(tokens)).astype(np.int32)[None]
            tokens.append(int(np.asarray(lm.logits(row, mask))[0, len(tokens) - 1].argmax()))
        assert tokens[len(ids):] == expected, prompt


TRICKY = [
    "Hello world 2024!", "  two  spaces", "naïve café — “quotes”", "tabs\tand\nnewlines", "emoji 🎬🍿",
    "<|im_start|>user\nhi<|im_end|>", "Toy Story (1995)", "",
]


def test_gguf_tokenizer_matches_transformers_without_torch(smollm2_gguf, ml100k_dir):
    """jaxrec rebuilds the tokenizer from GGUF metadata itself (transformers' GGUF
    path needs torch); it must tokenize exactly as transformers does."""
    from transformers import AutoTokenizer

    from jaxrec.data.item_tables import read_items
    from jaxrec.models.tokenizer import tokenizer_from_gguf

    ours = tokenizer_from_gguf(smollm2_gguf)
    theirs = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    texts = read_items(ml100k_dir).titles + TRICKY
    assert ours(texts)["input_ids"] == theirs(texts)["input_ids"]
    assert (ours.eos_token_id, ours.pad_token_id, ours.bos_token_id) == (
        theirs.eos_token_id, theirs.pad_token_id, theirs.bos_token_id,
    )
    ids = ours("Toy Story (1995)")["input_ids"]
    assert ours.decode(ids) == "Toy Story (1995)"


def test_jaxrec_loads_and_encodes_with_torch_unimportable(smollm2_gguf, tmp_path):
    import os
    import subprocess
    import sys

    # torch made unimportable the way a machine without it is: no finder knows it, so it never
    # enters sys.modules (a None entry there would look like an imported torch to libraries
    # that probe sys.modules, such as einops)
    script = (
        "import sys\n"
        "class WithoutTorch:\n"
        "    def __init__(self, finder): self.finder = finder\n"
        "    def __getattr__(self, name): return getattr(self.finder, name)\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'): return None\n"
        "        return self.finder.find_spec(name, path, target)\n"
        "sys.meta_path[:] = [WithoutTorch(finder) for finder in sys.meta_path]\n"
        "import jaxrec\n"
        f"lm = jaxrec.load_lm({str(smollm2_gguf)!r})\n"
        "print(lm.encode(['Toy Story', 'GoldenEye']).shape)\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {**os.environ, "JAXREC_CACHE": str(tmp_path)}  # a fresh cache: the tokenizer is rebuilt here
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2, 576)" in result.stdout
    assert "PyTorch was not found" not in result.stderr  # transformers' advice is silenced
