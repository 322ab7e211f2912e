"""Module names users write (`blocks.0.mlp`, `blocks.2.attn`, `embed`) and the hook points behind them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.protocol import HookedModel


@dataclass(frozen=True)
class Site:
    """A module's name, the hook point of its output and, for attention and MLP modules, where its
    input comes from: the residual stream at `resid_hook` passed through the layer norm `norm`."""

    name: str
    output_hook: str
    resid_hook: str | None = None
    norm: str | None = None

    def module_input(self, model: HookedModel, resid: torch.Tensor) -> torch.Tensor:
        """The module's input (its layer norm's output) computed from the residual stream."""
        if self.norm is None:
            raise ValueError(f"module={self.name!r} has no layer-norm input; use an attn or mlp module")
        return model.get_submodule(self.norm)(resid)


def module_sites(model: HookedModel) -> dict[str, Site]:
    """Every named module of `model` that interventions can target, in forward order."""
    sites = {
        "embed": Site("embed", "hook_embed"),
    }
    if model.cfg.positional_embedding_type in ("standard", "shortformer"):  # learned positions; a bridge's
        sites["pos_embed"] = Site("pos_embed", "hook_pos_embed")  # hook_pos_embed is the rotary cos/sin otherwise
    for layer in range(model.cfg.n_layers):
        sites[f"blocks.{layer}.attn"] = Site(
            f"blocks.{layer}.attn", f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.ln1"
        )
        sites[f"blocks.{layer}.mlp"] = Site(
            f"blocks.{layer}.mlp", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.ln2"
        )
    return sites


def resolve_site(model: HookedModel, module: str) -> Site:
    """The Site for a module name, or for a raw hook name (whose output is that hook's activation)."""
    sites = module_sites(model)
    if module in sites:
        return sites[module]
    if module in model.hook_dict:
        return Site(module, module)
    raise ValueError(
        f"module={module!r} is neither a module nor a hook point of this model; valid modules: "
        f"{', '.join(sites)}; or a hook name such as 'blocks.0.hook_resid_post'"
    )


def module_names(model: HookedModel, kinds: tuple[str, ...] = ("attn", "mlp")) -> list[str]:
    """Per-layer module names of the given kinds, e.g. ['blocks.0.attn', 'blocks.0.mlp', ...]."""
    return [f"blocks.{layer}.{kind}" for layer in range(model.cfg.n_layers) for kind in kinds]
