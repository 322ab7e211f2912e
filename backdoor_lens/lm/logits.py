"""Logits from a forward pass: of the next token after each row, or from a residual stream taken
partway (``stop_at_layer``), so logits at chosen positions only are cheap."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer
from transformer_lens.utilities.activation_functions import apply_softcap

from .rows import check_tokens


def final_logits(
    model: HookedTransformer, resid: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """What the forward pass does after its last block (final norm, unembedding, soft-cap), for a
    residual stream taken with ``stop_at_layer``: logits at chosen positions only are much cheaper."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)


@torch.no_grad()
def next_token_logits(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch d_vocab"]:
    """Logits of the token after each row's last position."""
    check_tokens(model, tokens)
    return model(tokens, return_type="logits")[:, -1]
