"""The intervention protocol and the one context manager that applies any list of interventions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint


HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]
Hook = tuple[str, HookFn]


@runtime_checkable
class Intervention(Protocol):
    """Anything that can produce forward hooks for a model."""

    def hooks(self, model: HookedTransformer) -> list[Hook]: ...


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


def positions_index(positions: int | Sequence[int] | None) -> slice | list[int]:
    """A position index for `[batch, pos, ...]` activations: all positions when None."""
    if positions is None:
        return slice(None)
    return [positions] if isinstance(positions, int) else list(positions)
