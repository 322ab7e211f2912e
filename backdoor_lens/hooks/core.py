"""The intervention protocol and the one context manager that applies any list of interventions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Int
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from ..validation import check_nonempty


HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]
Hook = tuple[str, HookFn]


@runtime_checkable
class Intervention(Protocol):
    """Anything that can produce forward hooks for a model."""

    def hooks(self, model: HookedTransformer) -> list[Hook]:
        """The ``(hook_name, hook_fn)`` pairs that make this intervention on `model`."""


def hooks_of(model: HookedTransformer, interventions: Sequence[Intervention]) -> list[Hook]:
    """Concatenate the hooks of `interventions`, checking every hook name exists on `model`."""
    out: list[Hook] = []
    for intervention in interventions:
        if not isinstance(intervention, Intervention):
            raise TypeError(f"interventions must provide .hooks(model); got {type(intervention).__name__}")
        for name, fn in intervention.hooks(model):
            if name not in model.hook_dict:
                raise ValueError(f"hook name {name!r} from {intervention!r} is not a hook point of this model")
            out.append((name, fn))
    return out


@contextmanager
def apply(model: HookedTransformer, *interventions: Intervention) -> Iterator[HookedTransformer]:
    """Run the ``with`` block with all `interventions` active; their hooks are removed afterwards.

    Hook names are validated before anything is added. Removal happens in a ``finally`` at this
    context's level only, so hooks the user added earlier (or an outer ``apply``) survive.
    """
    fwd_hooks = hooks_of(model, interventions)
    with model.hooks(fwd_hooks=fwd_hooks):
        yield model


def _fixed_index(positions: int | Sequence[int] | None) -> slice | list[int]:
    """A position index shared by every row: all positions when None."""
    if positions is None:
        return slice(None)
    return [positions] if isinstance(positions, int) else list(positions)


@dataclass(frozen=True, eq=False)
class PerRow:
    """One position per batch row, e.g. each prompt's last token (``TargetBatch.prompt_end``)."""

    positions: Int[torch.Tensor, " batch"]

    def __post_init__(self) -> None:
        if self.positions.ndim != 1 or self.positions.dtype.is_floating_point:
            raise ValueError(f"positions must be a 1-D integer tensor (one per row); got {tuple(self.positions.shape)} {self.positions.dtype}")
        check_nonempty("positions", self.positions)


Positions = int | tuple[int, ...] | PerRow | None


def row_index(positions: Positions, act: torch.Tensor, hook: HookPoint) -> tuple:
    """An index into `act` ([batch, pos, ...]) selecting `positions` (all when None) of every row."""
    if not isinstance(positions, PerRow):
        return (slice(None), _fixed_index(positions))
    pos = positions.positions.to(act.device)
    if len(pos) != act.shape[0]:
        raise ValueError(f"PerRow has {len(pos)} positions but {hook.name} has batch size {act.shape[0]}")
    if (pos < -act.shape[1]).any() or (pos >= act.shape[1]).any():
        raise ValueError(f"PerRow positions must lie in [-{act.shape[1]}, {act.shape[1]}) for {hook.name}")
    return (torch.arange(act.shape[0], device=act.device), pos)
