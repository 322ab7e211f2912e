"""Activation patching: overwrite a module's output with its activation on another input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from ..models.protocol import HookedModel
from ..util.validation import check_finite
from .core import Hook
from .positions import Positions, check_in_context, normalise_positions, row_index
from .sites import resolve_site


@dataclass(frozen=True, eq=False)
class Patch:
    """Replace a module's output at `positions` (all when None) by `source`, the same module's
    activation cached from a run on other (e.g. clean) inputs of the same shape."""

    module: str
    source: Float[torch.Tensor, "batch pos d_model"]
    positions: Positions = None

    def __post_init__(self) -> None:
        normalise_positions(self)
        check_finite("source", self.source)

    def hooks(self, model: HookedModel) -> list[Hook]:
        """One hook on the module's output hook point."""
        check_in_context(self.positions, model.cfg.n_ctx)
        source, positions = self.source, self.positions

        def hook(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            if source.shape != act.shape:
                raise ValueError(
                    f"source has shape {tuple(source.shape)} but {hook.name} has {tuple(act.shape)}; "
                    "patch from inputs of the same batch size and length"
                )
            index = row_index(positions, act, hook.name)
            act = act.clone()
            act[index] = source[index].to(act.dtype)
            return act

        return [(resolve_site(model, self.module).output_hook, hook)]
