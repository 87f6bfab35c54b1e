"""Benchmark: tokens/s of a LoRA MNTP step and a contrastive step on item
titles (batch 32), and of a CSFT step on 10-title histories (half the batch),
jaxrec vs PyTorch + peft, same model file, titles, LoRA shape and optimizer,
in one process. jaxrec runs on the same padded batches as PyTorch and on
the same examples packed several to a row. Each jaxrec rate
also comes as achieved GFLOP/s on real tokens (forward and backward of the
decoder body, the LM head where the loss reads it) against a matmul peak the
bench measures."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from jaxrec import assets
from jaxrec.bench import torch_reference
from jaxrec.bench.flops import decoder_forward_flops, matmul_peak
from jaxrec.data.item_tables import read_items
from jaxrec.methods.llm2rec import contrastive, csft, mntp
from jaxrec.methods.llm2rec.csft import csft_example
from jaxrec.models.decoder import Decoder
from jaxrec.models.layers import LoraSpec
from jaxrec.models.lm import load_pretrained
from jaxrec.shapes import pack_sequences, pad_batch
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.loop import LoopSpec
from jaxrec.train.optim import OptimizerSpec
from jaxrec.train.session import TrainingSession

LORA = LoraSpec(rank=8, alpha=16.0, dropout=0.0)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _selections(lm, titles, batch_size, steps, seed=0) -> list[list[list[int]]]:
    ids = lm.tokenizer(titles, truncation=True, max_length=64)["input_ids"]
    rng = np.random.default_rng(seed)
    return [[ids[i] for i in rng.choice(len(ids), batch_size, replace=False)] for _ in range(steps)]


def _csft_selections(lm, titles, batch_size, steps, seed=0) -> list[list]:
    """Each step's examples of 10-title histories and their next title, as the csft task builds them."""
    rng = np.random.default_rng(seed)
    return [[csft_example(lm.tokenizer, list(rng.choice(titles, 10)), str(rng.choice(titles)), 256)
             for _ in range(batch_size)] for _ in range(steps)]


def step_flops(config, batches: list[dict], objective: str) -> float:
    """Matmul FLOPs of the timed steps on real tokens: the decoder body forward
    and backward (frozen weights need only the activation gradient: about the
    forward again), twice for contrastive's two views, plus the LM head at the
    positions the loss reads (MNTP: every masked-token slot; CSFT: the targets)."""
    total = 0.0
    for batch in batches:
        mask = batch["attention_mask"]
        lengths = [int(n) for row in mask for n in np.bincount(row[row > 0])[1:]] if "item_row" in batch \
            else mask.sum(axis=1).tolist()
        body = 2 * decoder_forward_flops(config, lengths)
        head_positions = {"csft": lambda: batch["target_valid"].sum(), "contrastive": lambda: 0,
                          "mntp": lambda: 0.2 * sum(lengths)}[objective]()
        total += body * (2 if objective == "contrastive" else 1) + 2 * 2 * config.hidden_size * config.vocab_size * head_positions
    return total


def _with_warmup(timed: list[dict], warmup: int) -> tuple[list[dict], int]:
    """One batch of every shape the timed steps use first, so no compilation is timed."""
    first_of_shape = {tuple(sorted((k, v.shape) for k, v in b.items())): b for b in reversed(timed)}
    shapes = sorted(first_of_shape)
    batches = [first_of_shape[s] for s in shapes] * max(1, warmup // len(shapes)) + timed
    return batches, len(batches) - len(timed)


DROPOUT = {"mntp": 0.0, "contrastive": 0.2, "csft": 0.0}
"""Attention dropout of each step kind: contrastive's two views differ by dropout."""


def lora_engine(lm, objective: str):
    """A one-device engine for a LoRA step of ``objective`` on ``lm``, as the bench times it."""
    model = Decoder(lm.config.replace(lora=LORA, attention_dropout=DROPOUT[objective]))
    session = TrainingSession(mesh_lib.MeshSpec(), OptimizerSpec(1e-4, decay="constant"), LoopSpec(steps=1000))
    specials = tuple(lm.tokenizer.all_special_ids)
    masking = mntp.MaskingSpec(rate=0.2)
    if objective == "mntp":
        bound = mntp.make_loss(model, masking, lm.config.pad_token_id or 0, specials)
    elif objective == "csft":
        bound = csft.make_loss(model)
    else:
        bound = contrastive.make_loss(model, contrastive.ContrastiveSpec(0.1, "dropout"), masking, 0, specials)
    return session.engine(model, session.place(model, lm.params), bound, ("^lora/",), steps_per_epoch=1)


def step_batches(lm, titles, objective: str, batch_size: int, steps: int) -> dict[str, list[dict]]:
    """The bench's batches of one step kind, ``{"padded": ..., "packed": ...}``
    from the same examples: ``batch_size`` titles (CSFT: half as many 10-title
    histories), padded to the longest or packed several to a row."""
    pad = lm.config.pad_token_id or 0
    if objective == "csft":
        selections = _csft_selections(lm, titles[1:], max(1, batch_size // 2), steps)
        return {layout: [csft.collate(s, pad, 256, layout == "packed") for s in selections]
                for layout in ("padded", "packed")}
    selections = _selections(lm, titles, batch_size, steps)
    return {"padded": [pad_batch(s, pad, 64) for s in selections],
            "packed": [pack_sequences(s, 64, pad, max_segments=64) for s in selections]}


def _jax_tokens_per_s(lm, objective, batches, warmup):
    engine = lora_engine(lm, objective)
    for batch in batches[:warmup]:
        jax.block_until_ready(engine.train_step(batch))
    start = time.perf_counter()
    for batch in batches[warmup:]:
        metrics = engine.train_step(batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    timed = batches[warmup:]
    rate = sum(int((b["attention_mask"] > 0).sum()) for b in timed) / seconds
    return rate, float(metrics["loss"]), step_flops(lm.config, timed, objective) / seconds / 1e9


def _torch_tokens_per_s(objective, batches, warmup, mask_token_id, special_ids):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = assets.resolve_file("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, attn_implementation="eager", dtype=torch.float32,
        attention_dropout=DROPOUT[objective],
    )
    if objective != "csft":
        torch_reference.make_bidirectional(model)
    model = peft.get_peft_model(model, peft.LoraConfig(r=LORA.rank, lora_alpha=LORA.alpha, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    special = torch.tensor(special_ids)

    def step(batch):
        ids = torch.as_tensor(batch["input_ids"], dtype=torch.long)
        mask = torch.as_tensor(batch["attention_mask"], dtype=torch.long)
        if objective == "csft":  # left-padded histories: positions from the mask, as jaxrec computes them
            positions = (torch.cumsum(mask, -1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, :-1]
            target = torch.as_tensor(batch["target_mask"], dtype=torch.bool)[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits[target], ids[:, 1:][target])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return float(loss)
        visible = torch_reference.visible_keys_mask(mask, torch.float32)
        if objective == "mntp":
            real = mask.bool() & ~torch.isin(ids, special)
            real &= torch.cumsum(mask, -1) != 1
            chosen = real & (torch.rand(ids.shape) < 0.2)
            kind = torch.rand(ids.shape)
            corrupted = torch.where(kind < 0.8, mask_token_id, torch.where(kind < 0.9, torch.randint_like(ids, 0, model.config.vocab_size), ids))
            inputs = torch.where(chosen, corrupted, ids)
            logits = model(input_ids=inputs, attention_mask=visible).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits[chosen[:, 1:]], ids[:, 1:][chosen[:, 1:]])
        else:
            def embed():
                states = model.base_model.model.model(input_ids=ids, attention_mask=visible).last_hidden_state
                pooled = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                return torch.nn.functional.normalize(pooled, dim=-1)

            a, b = embed(), embed()
            loss = torch.nn.functional.cross_entropy(a @ b.T / 0.1, torch.arange(len(a)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss)

    for batch in batches[:warmup]:
        step(batch)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        loss = step(batch)
    seconds = time.perf_counter() - start
    return sum(int(b["attention_mask"].sum()) for b in batches[warmup:]) / seconds, loss


def run(batch_size: int = 32, steps: int = 12, warmup: int = 4, log=print) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    lm = load_pretrained("smollm2-135m")
    titles = read_items("ml-100k").titles
    pad = lm.config.pad_token_id or 0
    result = {"bench": "train", "model": "smollm2-135m", "batch_size": batch_size, "timed_steps": steps,
              "lora_rank": LORA.rank, "torch_threads": torch.get_num_threads()}
    specials = tuple(lm.tokenizer.all_special_ids)
    peak = matmul_peak()
    log(f"matmul peak (jax, float32): {peak['gflops']} GFLOP/s")
    result["matmul_peak_gflops"] = peak["gflops"]
    title_batches = step_batches(lm, titles, "mntp", batch_size, steps)  # MNTP and contrastive: the same titles
    kinds = {"mntp": title_batches, "contrastive": title_batches,
             "csft": step_batches(lm, titles, "csft", batch_size, steps)}
    for objective, layouts in kinds.items():
        padded, padded_warmup = _with_warmup(layouts["padded"], warmup)
        packed, packed_warmup = _with_warmup(layouts["packed"], warmup)
        log(f"{objective}: {steps} timed steps after warm-up steps of every shape, padded shapes "
            f"{sorted({b['input_ids'].shape for b in padded})}, packed {sorted({b['input_ids'].shape for b in packed})}")
        jax_rate, jax_loss, jax_gflops = _jax_tokens_per_s(lm, objective, padded, padded_warmup)
        log(f"{objective}: jaxrec {jax_rate:.0f} tokens/s, {jax_gflops:.1f} GFLOP/s (loss {jax_loss:.3f})")
        torch_rate, torch_loss = _torch_tokens_per_s(objective, padded, padded_warmup, pad, specials)
        log(f"{objective}: torch+peft {torch_rate:.0f} tokens/s (loss {torch_loss:.3f})")
        packed_rate, packed_loss, packed_gflops = _jax_tokens_per_s(lm, objective, packed, packed_warmup)
        log(f"{objective}: jaxrec packed {packed_rate:.0f} tokens/s, {packed_gflops:.1f} GFLOP/s "
            f"(loss {packed_loss:.3f})")
        result[f"{objective}_jaxrec_tokens_per_s"] = round(jax_rate, 1)
        result[f"{objective}_torch_tokens_per_s"] = round(torch_rate, 1)
        result[f"{objective}_speedup"] = round(jax_rate / torch_rate, 2)
        result[f"{objective}_jaxrec_gflops"] = round(jax_gflops, 1)
        result[f"{objective}_share_of_peak"] = round(jax_gflops / peak["gflops"], 3)
        result[f"{objective}_jaxrec_packed_tokens_per_s"] = round(packed_rate, 1)
        result[f"{objective}_packed_speedup"] = round(packed_rate / torch_rate, 2)
        result[f"{objective}_packed_share_of_peak"] = round(packed_gflops / peak["gflops"], 3)
    return result
