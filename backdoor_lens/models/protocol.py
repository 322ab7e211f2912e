"""What the library needs of a model, whichever TransformerLens class provides it: the
:class:`~backdoor_lens.models.protocol.HookedModel` protocol, the two backends and which of them this
TransformerLens installs.

- ``"hooked"``: :class:`transformer_lens.HookedTransformer`, weights converted into TransformerLens's
  own modules. TransformerLens 4 removed it; :func:`hooked_classes` then says so.
- ``"bridge"``: :class:`transformer_lens.model_bridge.TransformerBridge`, hook points wrapped around
  the Hugging Face model itself (about 50 architectures, multi-device loading). Present in
  TransformerLens 3.9 and 4.

Library functions take a :class:`HookedModel` and work on both; where the backends differ (the
key/value cache, the final residual stream, exact BAHA) they ask :func:`backend_of`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, ContextManager, Literal, Protocol, runtime_checkable

import torch

try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens 4 removed them; hooked_classes() says so when they are needed
    HookedTransformer = HookedTransformerConfig = None

Backend = Literal["hooked", "bridge"]
"""A backend's name."""
BACKENDS: tuple[str, ...] = ("hooked", "bridge")
"""Every backend's name: ``"hooked"`` (HookedTransformer) and ``"bridge"`` (TransformerBridge)."""
HookPair = tuple[str | Callable[[str], bool], Callable[..., Any]]
"""A TransformerLens hook: a hook point's name (or a filter over names) and the function to run there."""


@runtime_checkable
class HookedModel(Protocol):
    """The surface of a model the library uses: ``cfg`` (``n_layers``, ``n_heads``, ``d_head``,
    ``d_model``, ``d_vocab``, ``n_ctx``, ``device``), named hook points, scoped hooks, cached runs,
    and the :class:`torch.nn.Module` methods for weights and modes. ``HookedTransformer`` and
    ``TransformerBridge`` both provide it (the same names for the hook points the library uses:
    ``blocks.{l}.hook_resid_pre``, ``attn.hook_z``, ``hook_attn_out``, ``ln1.hook_normalized``, ...)."""

    cfg: Any

    @property
    def hook_dict(self) -> dict[str, Any]:
        """Every hook point by name."""

    def hooks(
        self, fwd_hooks: Sequence[HookPair] = (), bwd_hooks: Sequence[HookPair] = (), reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> ContextManager[Any]:
        """A context adding `fwd_hooks` and `bwd_hooks`, removing only those when it ends."""

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """A forward pass that also returns the activations `names_filter` selects."""

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any:
        """A forward pass with hooks added for this call only."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The forward pass (``return_type``, ``attention_mask``, ``stop_at_layer``, ...)."""

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """The trainable weights."""

    def named_parameters(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The trainable weights by name."""

    def named_modules(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.nn.Module]]:
        """Every submodule by its dotted path."""

    def get_submodule(self, target: str) -> torch.nn.Module:
        """A submodule by its dotted path (``embed``, ``blocks.0.attn``, ``ln_final``, ...)."""

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The weights as a mapping from names to tensors."""

    def train(self, mode: bool = True) -> Any:
        """Switch to training (or evaluation) mode."""

    def eval(self) -> Any:
        """Switch to evaluation mode."""


class BackendUnavailableError(ImportError):
    """The installed TransformerLens does not provide the backend asked for."""


def check_backend(backend: str) -> None:
    """Raise ValueError unless `backend` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not valid; choose one of: {', '.join(repr(b) for b in BACKENDS)}")


def hooked_classes() -> tuple[type, type]:
    """``HookedTransformer`` and ``HookedTransformerConfig``; under TransformerLens 4, which removed
    them, an error saying to use the bridge (the package itself imports either way)."""
    if HookedTransformer is None:
        from importlib.metadata import version

        raise BackendUnavailableError(
            f"backend='hooked' needs transformer_lens.HookedTransformer, which TransformerLens "
            f"{version('transformer-lens')} does not ship (removed in 4.0); use backend='bridge', or install "
            "transformer-lens>=3.9,<4"
        )
    return HookedTransformer, HookedTransformerConfig


def bridge_class() -> type:
    """``TransformerBridge``, imported on first use (TransformerLens 3.9 and 4 both ship it)."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def backend_of(model: object) -> str:
    """``"bridge"`` for a TransformerBridge, ``"hooked"`` for a HookedTransformer; TypeError otherwise."""
    if isinstance(model, bridge_class()):
        return "bridge"
    if HookedTransformer is not None and isinstance(model, HookedTransformer):
        return "hooked"
    raise TypeError(f"model is a {type(model).__name__}; expected a HookedTransformer or a TransformerBridge")


def is_bridge(model: object) -> bool:
    """Whether `model` is a TransformerBridge (the other backend being HookedTransformer)."""
    return backend_of(model) == "bridge"
