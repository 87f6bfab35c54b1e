"""LLM-SRec's trainable parts around a frozen decoder, and its objective.

Variables:
- ``params/llm``: the decoder's weights (frozen) plus ``extra_embedding``,
  the rows of the three added tokens (trainable);
- ``params/heads``: f_I (teacher item vector -> LLM width, injected at each
  [HistoryEmb]), f_user and f_item (LLM state at [UserOut] / [ItemOut] ->
  ``out_dim``), f_CF (teacher user vector -> ``out_dim``);
- ``constants``: the teacher's item table and every item's prompt, split
  where its recommender vector enters (``Prompts.item_parts``), so the jitted
  step gathers candidate prompts by item id itself.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.models.decoder import Decoder
from jaxrec.methods.llmsrec.spec import DistillSpec
from jaxrec.methods.llmsrec.distill import sequence_distillation_loss

TRAINABLE = ("^params/heads/", "^params/llm/extra_embedding$")


_ACTIVATIONS = {"leaky_relu": nn.leaky_relu, "gelu": lambda x: nn.gelu(x, approximate=False), "relu": nn.relu}


class _MLP(nn.Module):
    """Dense -> LayerNorm -> activation -> Dense."""

    hidden: int
    out: int
    activation: str

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.out)(_ACTIVATIONS[self.activation](nn.LayerNorm()(nn.Dense(self.hidden)(x))))


class DistillHeads(nn.Module):
    llm_dim: int
    head_hidden: int
    out_dim: int
    activation: str = "leaky_relu"
    teacher_activation: str = "gelu"

    def setup(self):
        self.history = _MLP(self.llm_dim, self.llm_dim, self.activation)
        self.user = _MLP(self.head_hidden, self.out_dim, self.activation)
        self.item = _MLP(self.head_hidden, self.out_dim, self.activation)
        self.teacher = _MLP(self.out_dim, self.out_dim, self.teacher_activation)

    def __call__(self, teacher_items, llm_states, teacher_users):
        """Every head once (for initialisation)."""
        return (self.history(teacher_items), self.user(llm_states), self.item(llm_states), self.teacher(teacher_users))


@dataclasses.dataclass(frozen=True)
class Distiller:
    """The frozen decoder (with three added tokens) and the heads."""

    decoder: Decoder
    heads: DistillHeads

    def init_heads(self, rng: jax.Array, teacher_dim: int) -> dict:
        width = self.decoder.config.hidden_size
        x = lambda d: jnp.zeros((1, d), jnp.float32)
        return self.heads.init(rng, x(teacher_dim), x(width), x(teacher_dim))["params"]

    def states(self, variables: dict, prompts: dict[str, jax.Array], past: dict | None = None) -> jax.Array:
        """[rows, llm_dim] decoder states at each prompt's last real token, with
        f_I of the teacher's item vectors injected at the [HistoryEmb] tokens;
        ``past``: the keys and values of the prompts' starts (``Decoder``)."""
        params, teacher_items = variables["params"], variables["constants"]["teacher_items"]
        items = prompts["history_items"]
        injected = self.heads.apply({"params": params["heads"]}, teacher_items[items], method=lambda h, x: h.history(x))
        last = jnp.sum(prompts["attention_mask"], axis=1, keepdims=True) - 1
        states = self.decoder.apply(
            {"params": params["llm"]}, prompts["input_ids"], prompts["attention_mask"], output="hidden",
            select=last, injected=injected, inject_mask=items > 0, past=past,
        )
        return states[:, 0].astype(jnp.float32)

    def head(self, variables: dict, name: str, x: jax.Array) -> jax.Array:
        return self.heads.apply({"params": variables["params"]["heads"]}, x, method=lambda h, v: getattr(h, name)(v))

    def user_vectors(self, variables: dict, prompts: dict[str, jax.Array]) -> jax.Array:
        return self.head(variables, "user", self.states(variables, prompts))

    def item_vectors(self, variables: dict, items: jax.Array) -> jax.Array:
        """f_item of the [ItemOut] state of each item id's prompt. The prompt's
        start (template and title) is run forward only, outside the gradient:
        it comes before anything trained, so only the rest ([HistoryEmb] to
        [ItemOut]) is differentiated, which spares the backward pass and its
        recomputation over most of each item prompt's tokens. Where the constants
        hold the starts' keys and values of the whole catalogue
        (:func:`item_start_cache`), they are gathered instead of computed."""
        table = variables["constants"]
        start_mask = table["item_start_mask"][items]
        if "item_start_k" in table:  # computed once per catalogue (item_start_cache)
            past = {"k": table["item_start_k"][:, items], "v": table["item_start_v"][:, items]}
        else:
            frozen = jax.lax.stop_gradient(variables["params"]["llm"])
            past = self.decoder.apply({"params": frozen}, table["item_start_ids"][items], start_mask, output="kv")
        end = jnp.broadcast_to(table["item_end_ids"], (items.shape[0], table["item_end_ids"].shape[0]))
        marks = jnp.zeros(end.shape, jnp.int32).at[:, 0].set(items)  # the [HistoryEmb] opens the rest
        prompts = {"input_ids": end, "attention_mask": jnp.ones_like(end), "history_items": marks}
        return self.head(variables, "item", self.states(variables, prompts, {**past, "mask": start_mask}))


def item_start_cache(decoder: Decoder, llm_params: dict, start_ids: np.ndarray, start_mask: np.ndarray,
                     batch_size: int = 64) -> dict[str, np.ndarray]:
    """The keys and values of every item prompt's start (template and title)
    ``{"item_start_k", "item_start_v"}`` [layers, items, width, kv heads, head
    dim]: the decoder is frozen and causal and nothing trained comes before the
    [HistoryEmb], so they are constants of the catalogue, computed once instead
    of at every step and evaluation."""
    kv = jax.jit(lambda p, ids, mask: decoder.apply({"params": p}, ids, mask, output="kv"))
    count = len(start_ids)
    padded = -(-count // batch_size) * batch_size  # every batch one shape: one compilation
    ids, mask = (np.pad(a, ((0, padded - count), (0, 0))) for a in (start_ids, start_mask))
    parts = [jax.device_get(kv(llm_params, ids[at: at + batch_size], mask[at: at + batch_size]))
             for at in range(0, padded, batch_size)]
    return {f"item_start_{key}": np.concatenate([part[key] for part in parts], axis=1)[:, :count]
            for key in ("k", "v")}


def item_start_cache_bytes(config, start_ids: np.ndarray) -> int:
    """Size of :func:`item_start_cache`'s arrays for these item starts."""
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * jnp.dtype(config.dtype).itemsize
    return int(per_token * start_ids.size)


def make_objective(model: Distiller, spec: DistillSpec):
    """(init, loss) for the training engine. Batches: the user prompt
    (``input_ids``, ``attention_mask``, ``history_items`` [B, L]), ``target``
    [B], ``negatives`` [B, spec.negatives] (drawn on the host, never the
    user's items) and ``teacher`` [B, teacher_dim], the frozen SASRec's user vector."""
    weights = spec.weights()

    def loss(variables, _objective_params, batch, _rng):
        candidates = jnp.concatenate([batch["target"][:, None], batch["negatives"]], axis=1)
        user = model.user_vectors(variables, batch)
        items = model.item_vectors(variables, candidates.reshape(-1)).reshape(*candidates.shape, -1)
        teacher = model.head(variables, "teacher", batch["teacher"])
        return sequence_distillation_loss(user, items, teacher, weights)

    return (lambda rng: {}), loss
