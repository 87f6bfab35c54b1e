"""The PyTorch side of parity tests and benchmarks: transformers models run
causally or with causal masking disabled. Needs the ``test`` extra (torch)."""

from __future__ import annotations

import numpy as np


def make_bidirectional(model) -> None:
    """Disable causal masking on every attention module of a transformers model."""
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False


def visible_keys_mask(attention_mask, dtype):
    """A 4D additive mask [batch, 1, length, length] that hides only padding keys;
    transformers passes 4D masks through unchanged."""
    import torch

    attention_mask = torch.as_tensor(attention_mask)
    length = attention_mask.shape[-1]
    hidden = (1 - attention_mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min
    return hidden.expand(-1, 1, length, -1)


def hidden_states(model, input_ids, attention_mask=None, bidirectional: bool = False) -> np.ndarray:
    """Last hidden states after the final norm, as numpy."""
    import torch

    input_ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    mask = visible_keys_mask(attention_mask, model.dtype) if bidirectional else attention_mask
    with torch.no_grad():
        out = model.model(input_ids=input_ids, attention_mask=mask)
    return out.last_hidden_state.float().numpy()


def logits(model, input_ids, attention_mask=None) -> np.ndarray:
    import torch

    input_ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    kwargs = {} if attention_mask is None else {"attention_mask": torch.as_tensor(np.asarray(attention_mask))}
    with torch.no_grad():
        return model(input_ids=input_ids, **kwargs).logits.float().numpy()
