"""The intervention protocol, and the context managers through which every temporary change to a
model goes: :func:`~backdoor_lens.hooks.core.apply` for interventions (forward hooks, and weight edits such as embedding
surgery or frozen modules) and :func:`~backdoor_lens.hooks.core.restored` for training or editing weights in place."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import ContextManager, Protocol, runtime_checkable

import torch
from transformer_lens.hook_points import HookPoint

from ..models.protocol import HookedModel

HookFn = Callable[[torch.Tensor, HookPoint], torch.Tensor | None]
Hook = tuple[str, HookFn]


@runtime_checkable
class Intervention(Protocol):
    """Anything that can produce forward hooks for a model."""

    def hooks(self, model: HookedModel) -> list[Hook]:
        """The ``(hook_name, hook_fn)`` pairs that make this intervention on `model`."""


@runtime_checkable
class WeightEdit(Protocol):
    """A temporary change to a model's weights or parameters (embedding surgery, freezing), undone on exit."""

    def applied(self, model: HookedModel) -> ContextManager[HookedModel]:
        """A context in which `model` carries the change; leaving it undoes the change."""


Change = Intervention | WeightEdit


def hooks_of(model: HookedModel, interventions: Sequence[Intervention]) -> list[Hook]:
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
def apply(model: HookedModel, *changes: Change) -> Iterator[HookedModel]:
    """Run the ``with`` block with all `changes` active: interventions' hooks, and weight edits
    (objects with ``applied(model)``, such as :class:`~backdoor_lens.hooks.surgery.EmbeddingSurgery`
    or :class:`~backdoor_lens.lm.training.Freeze`). Everything is undone afterwards.

    Hook names are validated before anything is added. Removal happens in a ``finally`` at this
    context's level only, so hooks the user added earlier (or an outer ``apply``) survive.
    """
    for change in changes:
        if not isinstance(change, (Intervention, WeightEdit)):
            raise TypeError(f"apply takes interventions (.hooks) or weight edits (.applied); got {type(change).__name__}")
    interventions = [c for c in changes if isinstance(c, Intervention)]
    fwd_hooks = hooks_of(model, interventions)
    with ExitStack() as stack:
        for change in changes:
            if not isinstance(change, Intervention):
                stack.enter_context(change.applied(model))
        stack.enter_context(model.hooks(fwd_hooks=fwd_hooks))
        yield model


@contextmanager
def restored(model: torch.nn.Module, names: Sequence[str] | None = None) -> Iterator[torch.nn.Module]:
    """Snapshot `model`'s parameters (those in `names`, all when None) and its train/eval mode, and
    restore them when the block ends, however it ends: train or edit freely inside."""
    params = dict(model.named_parameters())
    if names is not None:
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"names has {unknown[:4]}, which are not parameters of this model; e.g. {list(params)[:4]}")
    kept = {n: params[n].detach().clone() for n in (params if names is None else names)}
    training = model.training
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, value in kept.items():
                params[n].copy_(value)
        model.train(training)
