"""LoRA (Hu et al., arXiv 2106.09685) on a TransformerLens model's own weights: each adapted weight
``W`` reads as ``W + (alpha / rank) * A @ B`` while adapters are attached, only ``A`` and ``B`` train,
and leaving merges the update into ``W`` (or drops it). BkdAttr plants its backdoors this way
(rank 16 on every projection; arXiv 2509.21761).

A weight is adapted as the matrix that maps its input to its output: ``W_Q`` / ``W_K`` / ``W_V``
([head, d_model, d_head]) as d_model -> head x d_head, ``W_O`` ([head, d_head, d_model]) as
head x d_head -> d_model, MLP weights as they are. ``B`` starts at zero, so attaching changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch.nn.utils import parametrize

from ..models.protocol import HookedModel
from ..util.validation import check_choice, check_names, check_range
from .training import TrainConfig, train, trainable_names

LORA_TARGETS = ("W_Q", "W_K", "W_V", "_W_K", "_W_V", "W_O", "W_in", "W_gate", "W_out")
"""Weight names adapted by default: every attention and MLP projection."""
_INPUT_DIMS = {"W_Q": (1,), "W_K": (1,), "W_V": (1,), "_W_K": (1,), "_W_V": (1,), "W_O": (0, 1)}


@dataclass(frozen=True)
class LoraConfig:
    """Adapter rank, scaling ``alpha`` (the update is scaled by alpha / rank), which weights to adapt
    (names of parameters, e.g. ``W_Q``), and whether leaving merges the update or drops it."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = LORA_TARGETS
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("rank", self.rank, 1)
        check_range("alpha", self.alpha, 0.0)
        check_names("targets", self.targets)


class _LowRankDelta(torch.nn.Module):
    """The parametrisation ``W -> W + scale * A @ B`` for one weight, with A and B its trainable parameters."""

    def __init__(self, weight: torch.Tensor, input_dims: tuple[int, ...], config: LoraConfig, generator: torch.Generator):
        super().__init__()
        self.input_dims = input_dims
        self.output_dims = tuple(d for d in range(weight.ndim) if d not in input_dims)
        n_in = math.prod(weight.shape[d] for d in input_dims)
        n_out = math.prod(weight.shape[d] for d in self.output_dims)
        if config.rank > min(n_in, n_out):
            raise ValueError(f"rank={config.rank} exceeds the adapted weight's smaller side ({min(n_in, n_out)}); lower it")
        a = torch.empty(n_in, config.rank, dtype=weight.dtype)
        torch.nn.init.kaiming_uniform_(a.T, a=math.sqrt(5), generator=generator)
        self.A = torch.nn.Parameter(a.to(weight.device))
        self.B = torch.nn.Parameter(torch.zeros(config.rank, n_out, dtype=weight.dtype, device=weight.device))
        self.scale = config.alpha / config.rank
        self.shape = tuple(weight.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        order = self.input_dims + self.output_dims
        delta = (self.A @ self.B) * self.scale
        delta = delta.view(*(self.shape[d] for d in order)).permute(*[order.index(d) for d in range(len(order))])
        return weight + delta


def _targets(model: torch.nn.Module, config: LoraConfig) -> list[tuple[torch.nn.Module, str]]:
    found = [
        (module, name)
        for module in model.modules()
        for name, param in module.named_parameters(recurse=False)
        if name in config.targets and param.ndim >= 2
    ]
    if not found:
        raise ValueError(f"targets={config.targets} match no weight of this model; valid names include {LORA_TARGETS}")
    return found


@contextmanager
def lora_adapters(model: torch.nn.Module, config: LoraConfig = LoraConfig(), merge: bool = True) -> Iterator[list[torch.nn.Parameter]]:
    """Attach LoRA adapters to `model`'s target weights and freeze every other parameter; yields the
    adapters' parameters (what to train). On leaving, the update is merged into the weights when
    `merge` (and the run did not fail), else dropped; every parameter's ``requires_grad`` is restored."""
    check_choice("merge", merge, (True, False))
    targets = _targets(model, config)
    orders = {module: list(module._parameters) for module, _ in targets}
    strides = {(module, name): getattr(module, name).stride() for module, name in targets}
    frozen = {p: p.requires_grad for p in model.parameters()}
    generator = torch.Generator().manual_seed(config.seed)
    adapters: list[torch.nn.Parameter] = []
    failed = False
    try:
        for p in frozen:
            p.requires_grad_(False)
        for module, name in targets:
            weight = getattr(module, name)
            delta = _LowRankDelta(weight.detach(), _INPUT_DIMS.get(name, (0,)), config, generator)
            parametrize.register_parametrization(module, name, delta)
            adapters += [delta.A, delta.B]
        yield adapters
    except BaseException:
        failed = True
        raise
    finally:
        for module, name in targets:
            if parametrize.is_parametrized(module, name):
                parametrize.remove_parametrizations(module, name, leave_parametrized=merge and not failed)
        for module, order in orders.items():
            _reorder_parameters(module, order)
        with torch.no_grad():
            for (module, name), stride in strides.items():
                _restride(getattr(module, name), stride)
        for p, flag in frozen.items():
            p.requires_grad_(flag)


def _restride(param: torch.nn.Parameter, stride: tuple[int, ...]) -> None:
    """Give `param` back the memory layout (`stride`) it had before adapters (a merge stores the sum
    contiguously), keeping its values and identity; see :mod:`~backdoor_lens.models.layout`."""
    if param.stride() != stride:
        param.data = torch.empty_strided(param.shape, stride, dtype=param.dtype, device=param.device).copy_(param.data)


def _reorder_parameters(module: torch.nn.Module, order: list[str]) -> None:
    """Put `module`'s own parameters back in `order`: removing a parametrisation re-registers the
    weight last, which would change the model's state_dict order (and digests taken over it)."""
    params = module._parameters
    kept = dict(params)
    params.clear()
    params.update({name: kept[name] for name in order if name in kept})
    params.update({name: value for name, value in kept.items() if name not in params})


def train_weights(
    model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], config: TrainConfig, lora: LoraConfig | None = None,
    **train_kwargs: Any,
) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`~backdoor_lens.lm.training.train` `model` in place, its unfrozen weights directly or,
    with `lora`, through adapters merged into the weights afterwards. Returns the training history
    and the names of the parameters that changed (what a checkpoint of the run must keep)."""
    if lora is None:
        return train(model, tokens, config, **train_kwargs), trainable_names(model, config.freeze)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with lora_adapters(model, lora):
        history = train(model, tokens, config, **train_kwargs)
    return history, [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
