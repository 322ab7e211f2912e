"""Fine-pruning (Liu et al. 2018, arXiv 1805.12185): backdoor behaviour often lives in neurons that
clean inputs leave dormant, so prune the MLP neurons least active on the defender's clean prompts,
then fine-tune on clean data to recover what pruning cost.

Activity is a neuron's mean activation (``blocks.{l}.mlp.hook_post``) over every real token of the
clean chat prompts. Pruning a neuron zeroes its ``W_out`` row and its ``W_in`` / ``W_gate`` columns
and ``b_in`` entry, so it reads nothing and writes nothing; during the fine-tuning its gradients are
masked, so AdamW (whose decoupled weight decay keeps zeros at zero) leaves it pruned.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from transformers import PreTrainedTokenizerBase

from ..lm.chat import encode_prompts
from ..lm.rows import batches, check_tokens, right_pad
from ..models.protocol import HookedModel
from ..util.validation import check_choice, check_range
from .base import Budget, DefendedModel, check_pairs, clean_rows, train_for_budget

SCOPES = ("layer", "global")
NEURON_WEIGHTS = {"W_in": 1, "W_gate": 1, "b_in": 0, "W_out": 0}
"""Each MLP parameter that holds a neuron, and the dimension that indexes neurons in it."""


@torch.no_grad()
def neuron_means(
    model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"],
    batch_size: int = 32,
) -> Float[torch.Tensor, "layer d_mlp"]:
    """Each MLP neuron's mean activation (``hook_post``) over the tokens where `mask` is 1."""
    check_tokens(model, tokens)
    if mask.shape != tokens.shape or not mask.any():
        raise ValueError(f"mask must have tokens' shape {tuple(tokens.shape)} and mark at least one token")
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(model.cfg.n_layers)]
    sums = torch.zeros(model.cfg.n_layers, model.cfg.d_mlp)
    for rows, rows_mask in zip(batches(tokens, batch_size), batches(mask, batch_size)):
        _, cache = model.run_with_cache(rows.to(model.cfg.device), names_filter=names, return_type=None)
        weight = rows_mask.to(cache[names[0]].device, cache[names[0]].dtype)[..., None]
        for layer, name in enumerate(names):
            sums[layer] += (cache[name] * weight).sum((0, 1)).float().cpu()
    return sums / mask.sum()


def least_active(
    means: Float[torch.Tensor, "layer d_mlp"], share: float, scope: str = "layer"
) -> Bool[torch.Tensor, "layer d_mlp"]:
    """True for the `share` of neurons with the lowest mean activation: that share of every layer
    (`scope` "layer") or of all neurons together ("global")."""
    check_range("share", share, 0.0, 1.0)
    check_choice("scope", scope, SCOPES)
    pruned = torch.zeros_like(means, dtype=torch.bool)
    if scope == "layer":
        n = round(share * means.shape[1])
        pruned.scatter_(1, means.argsort(1)[:, :n], True)
    else:
        n = round(share * means.numel())
        pruned.view(-1)[means.flatten().argsort()[:n]] = True
    return pruned


def _neuron_params(model: HookedModel, layer: int) -> Iterator[tuple[torch.nn.Parameter, int]]:
    mlp = model.blocks[layer].mlp
    for name, dim in NEURON_WEIGHTS.items():
        param = getattr(mlp, name, None)
        if isinstance(param, torch.nn.Parameter):
            yield param, dim


def _keep(pruned: Bool[torch.Tensor, " d_mlp"], param: torch.Tensor, dim: int) -> torch.Tensor:
    shape = [1] * param.ndim
    shape[dim] = -1
    return (~pruned).to(param.device, param.dtype).view(shape)


@torch.no_grad()
def prune_neurons(model: HookedModel, pruned: Bool[torch.Tensor, "layer d_mlp"]) -> None:
    """Zero, in place, every weight that reads into or writes from the `pruned` neurons."""
    if pruned.shape != (model.cfg.n_layers, model.cfg.d_mlp):
        raise ValueError(f"pruned has shape {tuple(pruned.shape)}; expected [n_layers, d_mlp] = "
                         f"{(model.cfg.n_layers, model.cfg.d_mlp)}")
    for layer in range(model.cfg.n_layers):
        for param, dim in _neuron_params(model, layer):
            param.mul_(_keep(pruned[layer], param, dim))


@contextmanager
def pruned_stay_zero(model: HookedModel, pruned: Bool[torch.Tensor, "layer d_mlp"]) -> Iterator[HookedModel]:
    """Inside the block, gradients of the `pruned` neurons' weights are zeroed, so training (AdamW
    without them, and weight decay on zeros) keeps them at zero."""
    handles = []
    try:
        for layer in range(model.cfg.n_layers):
            for param, dim in _neuron_params(model, layer):
                if param.requires_grad:
                    keep = _keep(pruned[layer], param, dim)
                    handles.append(param.register_hook(lambda grad, keep=keep: grad * keep))
        yield model
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class FinePruning:
    """Prune the `share` of MLP neurons least active on the clean prompts, per layer or globally
    (`scope`), then fine-tune for the budget with them held at zero (`fine_tune` False: prune only).
    Edits `model` in place."""

    share: float = 0.2
    scope: str = "layer"
    fine_tune: bool = True

    def __post_init__(self) -> None:
        check_range("share", self.share, 0.0, 1.0)
        check_choice("scope", self.scope, SCOPES)

    @property
    def name(self) -> str:
        """``fine-pruning`` (``pruning`` without the fine-tuning)."""
        return "fine-pruning" if self.fine_tune else "pruning"

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """Prune, then fine-tune; the result's facts hold the pruned mask and the training history."""
        check_pairs(prompts, answers)
        tokens, real = right_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id or 0)
        pruned = least_active(neuron_means(model, tokens, real), self.share, self.scope)
        prune_neurons(model, pruned)
        history: list[dict] = []
        if self.fine_tune:
            rows, mask = clean_rows(tokenizer, prompts, answers, budget)
            with pruned_stay_zero(model, pruned):
                history = train_for_budget(model, rows, mask, budget, desc=self.name)
        return DefendedModel(model, facts={"pruned": pruned, "pruned_per_layer": pruned.sum(1).tolist(),
                                           "steps": budget.steps if self.fine_tune else 0, "history": history})
