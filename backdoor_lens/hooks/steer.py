"""Steering: add a fixed vector (e.g. a backdoor vector) to the residual stream of one layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from ..models.protocol import HookedModel
from ..util.validation import check_choice, check_finite
from .core import Hook
from .positions import Positions, check_in_context, normalise_positions, row_index

STEER_HOOKS = ("attn_out", "resid_pre", "resid_mid", "resid_post", "mlp_out")


@dataclass(frozen=True, eq=False)
class Steer:
    """Add ``scale * vector`` to ``blocks.{layer}.hook_{hook}`` at `positions` (all when None; use
    :class:`~backdoor_lens.hooks.positions.PerRow` for one position per row). The default, ``attn_out``,
    is the residual stream right after layer `layer`'s attention, where BkdAttr adds its backdoor vector."""

    layer: int
    vector: Float[torch.Tensor, " d_model"]
    positions: Positions = None
    scale: float = 1.0
    hook: str = "attn_out"

    def __post_init__(self) -> None:
        normalise_positions(self)
        check_choice("hook", self.hook, STEER_HOOKS)
        if self.vector.ndim != 1:
            raise ValueError(f"vector has shape {tuple(self.vector.shape)}; expected [d_model]")
        check_finite("vector", self.vector)
        check_finite("scale", torch.tensor(float(self.scale)))

    def hooks(self, model: HookedModel) -> list[Hook]:
        """One hook adding the scaled vector at ``blocks.{layer}.hook_{hook}``."""
        check_in_context(self.positions, model.cfg.n_ctx)
        if not 0 <= self.layer < model.cfg.n_layers:
            raise ValueError(f"layer={self.layer} is out of range; valid: [0, {model.cfg.n_layers})")
        if self.vector.shape[0] != model.cfg.d_model:
            raise ValueError(f"vector has length {self.vector.shape[0]}; the model's d_model is {model.cfg.d_model}")
        add = self.scale * self.vector
        positions = self.positions

        def hook(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            index = row_index(positions, act, hook.name)
            act = act.clone()
            act[index] += add.to(act)
            return act

        return [(f"blocks.{self.layer}.hook_{self.hook}", hook)]
