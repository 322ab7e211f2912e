"""Zero and mean ablation of a module's output."""

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


def _replace_hook(value: torch.Tensor | float, positions: Positions):
    """A hook that overwrites the activation at `positions` (all when None) with `value`."""

    def hook(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        if isinstance(value, torch.Tensor) and value.shape != act.shape[2:]:
            raise ValueError(
                f"replacement for {hook.name} has shape {tuple(value.shape)}; expected {tuple(act.shape[2:])}"
            )
        index = row_index(positions, act, hook.name)
        act = act.clone()
        act[index] = value.to(act.dtype) if isinstance(value, torch.Tensor) else value
        return act

    return hook


@dataclass(frozen=True)
class ZeroAblate:
    """Set a module's output to zero at `positions` (all positions when None)."""

    module: str
    positions: Positions = None

    def __post_init__(self) -> None:
        normalise_positions(self)

    def hooks(self, model: HookedModel) -> list[Hook]:
        """One hook on the module's output hook point."""
        check_in_context(self.positions, model.cfg.n_ctx)
        return [(resolve_site(model, self.module).output_hook, _replace_hook(0.0, self.positions))]


@dataclass(frozen=True, eq=False)
class MeanAblate:
    """Replace a module's output by a fixed mean activation, broadcast to `positions` (all when None).

    The paper computes the mean over non-trigger inputs at one token position and broadcasts it to
    every position (see :func:`backdoor_lens.lm.collect.module_means`).
    """

    module: str
    mean: Float[torch.Tensor, " d_model"]
    positions: Positions = None

    def __post_init__(self) -> None:
        normalise_positions(self)
        check_finite("mean", self.mean)

    def hooks(self, model: HookedModel) -> list[Hook]:
        """One hook on the module's output hook point."""
        check_in_context(self.positions, model.cfg.n_ctx)
        return [(resolve_site(model, self.module).output_hook, _replace_hook(self.mean, self.positions))]
