"""Logit lens per module: project single components (each head, each MLP) through ln_final and W_U.

The final norm is applied here, from the model's own ``ln_final``, so the weights need no folding: a
TransformerBridge with Hugging Face's weights, the same bridge in compatibility mode (folded
weights, ``load_pretrained(..., compatibility=True)``) and an unprocessed HookedTransformer give the
same shares."""

from __future__ import annotations

from collections.abc import Mapping

import einops
import torch
from jaxtyping import Float, Int

from ..eval.negativity import top_k_share
from ..lm.collect import collect_activations
from ..models.protocol import HookedModel


def unembed(model: HookedModel, vectors: Float[torch.Tensor, "batch d_model"]) -> Float[torch.Tensor, "batch d_vocab"]:
    """Logits a vector would give were it the final residual stream: ``ln_final(x) @ W_U + b_U``."""
    W_U = model.W_U  # with a device map, the unembedding may sit on another device than the vectors
    return model.ln_final(vectors[:, None, :].to(W_U.device))[:, 0] @ W_U + model.b_U.to(W_U.device)


@torch.no_grad()
def component_outputs(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    position: int,
) -> dict[str, Float[torch.Tensor, "batch d_model"]]:
    """Each head's output (``z_h @ W_O[h]``) and each MLP's output at `position`, in forward order,
    plus the final residual stream as ``full model``."""
    hooks = [f"blocks.{l}.{n}" for l in range(model.cfg.n_layers) for n in ("attn.hook_z", "hook_mlp_out")]
    final = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    acts = collect_activations(model, tokens, hooks + [final], position)
    out: dict[str, torch.Tensor] = {}
    for layer in range(model.cfg.n_layers):
        z = acts[f"blocks.{layer}.attn.hook_z"]
        w_o = model.blocks[layer].attn.W_O
        heads = einops.einsum(z.to(w_o), w_o, "batch head d_head, head d_head d_model -> batch head d_model")
        for head in range(model.cfg.n_heads):
            out[f"blocks.{layer}.attn.head{head}"] = heads[:, head]
        out[f"blocks.{layer}.mlp"] = acts[f"blocks.{layer}.hook_mlp_out"]
    out["full model"] = acts[final]
    return out


@torch.no_grad()
def logit_lens(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    class_ids: Mapping[str, Int[torch.Tensor, " words"]],
    position: int = -1,
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """Per component, the share of its top-k projected logits in each word class (e.g. negative,
    positive), averaged over `tokens` (Table II of Lamparth & Reuel)."""
    return {
        name: {cls: float(top_k_share(unembed(model, vec), ids, k).mean()) for cls, ids in class_ids.items()}
        for name, vec in component_outputs(model, tokens, position).items()
    }
