"""Logits from a forward pass: of the next token after each row, or from the residual stream after
the last block (:func:`~backdoor_lens.lm.logits.final_residual`), so that logits at chosen positions
only are cheap."""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float, Int
from transformer_lens.utilities.activation_functions import apply_softcap

from ..models.protocol import HookedModel, is_bridge
from .rows import check_tokens


class _Stopped(Exception):
    """Raised by a hook to end a bridge's forward pass early, carrying the activation it saw."""

    def __init__(self, activation: torch.Tensor):
        super().__init__("forward pass stopped after the last block")
        self.activation = activation


def final_residual(
    model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], **kwargs: Any
) -> Float[torch.Tensor, "batch pos d_model"]:
    """The residual stream after the last block (what the final norm reads), without computing the
    logits; `kwargs` go to the forward pass. A HookedTransformer stops with ``stop_at_layer``; a
    TransformerBridge, whose ``stop_at_layer`` cannot stop after the last block, stops from a hook
    on ``blocks.{n_layers - 1}.hook_resid_post``."""
    last = model.cfg.n_layers
    if not is_bridge(model):
        return model(tokens, stop_at_layer=last, **kwargs)

    def stop(act: torch.Tensor, hook: Any) -> None:
        raise _Stopped(act)

    try:
        with model.hooks(fwd_hooks=[(f"blocks.{last - 1}.hook_resid_post", stop)]):
            model(tokens, **kwargs)
    except _Stopped as stopped:
        return stopped.activation
    raise RuntimeError(f"blocks.{last - 1}.hook_resid_post did not fire; the bridge skipped its last block")


def final_logits(
    model: HookedModel, resid: Float[torch.Tensor, "batch pos d_model"]
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """What the forward pass does after its last block (final norm, unembedding, soft-cap), for a
    residual stream from :func:`final_residual`: logits at chosen positions only are much cheaper."""
    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid)
    return apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)


@torch.no_grad()
def next_token_logits(model: HookedModel, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch d_vocab"]:
    """Logits of the token after each row's last position."""
    check_tokens(model, tokens)
    return model(tokens, return_type="logits")[:, -1]
