"""Attention-head ablation.

A head's output is ``z[:, pos, head] @ W_O[head]``; zeroing ``z`` (``blocks.{l}.attn.hook_z``) at a
position removes exactly that head's contribution to the attention output there (``b_O`` stays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from transformer_lens.hook_points import HookPoint

from ..models.protocol import HookedModel
from ..util.validation import check_choice, check_finite, check_nonempty
from .core import Hook
from .positions import Positions, check_in_context, normalise_positions, row_index


def check_heads(model: HookedModel, heads: Sequence[tuple[int, int]]) -> None:
    """Raise ValueError unless every (layer, head) exists in `model`."""
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(
                f"head ({layer}, {head}) is out of range; valid: layer in [0, {model.cfg.n_layers}), "
                f"head in [0, {model.cfg.n_heads})"
            )


@dataclass(frozen=True, eq=False)
class HeadAblate:
    """Remove `heads`' outputs at `positions` by setting their ``z`` to zero (mode "zero") or to a
    mean ``z`` (mode "mean", `means` of shape [n_layers, n_heads, d_head], e.g. from
    :func:`backdoor_lens.analysis.baha.head_z_means`)."""

    heads: tuple[tuple[int, int], ...]
    positions: Positions = None
    mode: str = "zero"
    means: Float[torch.Tensor, "n_layers n_heads d_head"] | None = None

    def __post_init__(self) -> None:
        normalise_positions(self)
        check_nonempty("heads", self.heads)
        if not all(len(h) == 2 and all(isinstance(i, int) for i in h) for h in self.heads):
            raise ValueError(f"heads={self.heads!r} must be (layer, head) pairs of ints")
        check_choice("mode", self.mode, ("zero", "mean"))
        if (self.mode == "mean") != (self.means is not None):
            raise ValueError("means is required with mode='mean' and must be None with mode='zero'")
        if self.means is not None:
            check_finite("means", self.means)

    def hooks(self, model: HookedModel) -> list[Hook]:
        """One hook on ``hook_z`` of each layer holding an ablated head."""
        check_in_context(self.positions, model.cfg.n_ctx)
        check_heads(model, self.heads)
        if self.means is not None and self.means.shape != (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head):
            raise ValueError(
                f"means has shape {tuple(self.means.shape)}; expected "
                f"{(model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head)} (n_layers, n_heads, d_head)"
            )
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            by_layer.setdefault(layer, []).append(head)
        return [(f"blocks.{layer}.attn.hook_z", self._hook(layer, heads)) for layer, heads in sorted(by_layer.items())]

    def _hook(self, layer: int, heads: list[int]):
        value = 0.0 if self.means is None else self.means[layer, heads]  # [heads, d_head]
        positions = self.positions

        def hook(z: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            rows, pos = row_index(positions, z, hook.name)
            z = z.clone()
            if isinstance(rows, torch.Tensor):  # one position per row: [batch, heads, d_head]
                z[rows[:, None], pos[:, None], torch.tensor(heads, device=z.device)] = (
                    value.to(z) if isinstance(value, torch.Tensor) else value
                )
            else:
                sub = z[rows, pos]  # [batch, n_pos, n_heads, d_head] copy
                sub[:, :, heads] = value.to(z) if isinstance(value, torch.Tensor) else value
                z[rows, pos] = sub
            return z

        return hook
