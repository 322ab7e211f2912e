"""BEEAR (Zeng et al. 2024, "BEEAR: Embedding-based Adversarial Removal of Safety Backdoors in
Instruction-tuned Language Models", arXiv 2406.17092): a trigger acts as a roughly uniform drift of
the model's hidden states, so search for such a drift without the trigger and train the model to
ignore it.

Bi-level, alternating every optimiser step. The inner level finds a universal perturbation ``delta``
(one d_model vector, added to ``blocks.{layer}.hook_resid_pre`` at every prompt position of every
row) that pushes the model off its clean answers: a few normalised gradient steps that raise the
clean answers' NLL (and, with defender-chosen `unwanted` replies, lower theirs), kept within an L2
ball of `radius` times the layer's mean residual norm. The outer level trains the model to give the
clean answers both without ``delta`` (train's loss) and with it (`perturbed_weight` x NLL).
The defender's proxy never uses the attacker's trigger or target; `unwanted` replies are the
defender's own guess at what bad behaviour looks like (e.g. generic refusals or insults).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from transformers import PreTrainedTokenizerBase

from ..lm.loss import next_token_loss
from ..lm.rows import right_pad
from ..lm.training import ExtraLoss
from ..models.protocol import HookedModel
from ..util.validation import check_range
from .base import Budget, DefendedModel, clean_rows, train_for_budget


def prompt_positions(mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos"]:
    """1 on each row's prompt (every position before its first response token), 0 elsewhere."""
    return (torch.arange(mask.shape[1])[None] < mask.argmax(1)[:, None]).long()


@contextmanager
def perturbed(
    model: HookedModel, layer: int, delta: Float[torch.Tensor, " d_model"], where: Int[torch.Tensor, "batch pos"]
) -> Iterator[HookedModel]:
    """Inside the block, `delta` is added to ``blocks.{layer}.hook_resid_pre`` where `where` is 1
    (forward passes may use fewer positions than `where` has)."""

    def hook(act: torch.Tensor, hook: object) -> torch.Tensor:
        return act + where[:, : act.shape[1], None].to(act) * delta.to(act)

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)]):
        yield model


@torch.no_grad()
def mean_resid_norm(
    model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], where: Int[torch.Tensor, "batch pos"], layer: int
) -> float:
    """Mean L2 norm of the residual stream entering `layer` over the positions where `where` is 1."""
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=[name], stop_at_layer=layer + 1)
    norms = cache[name].norm(dim=-1).float().cpu()
    return float((norms * where).sum() / where.sum())


def with_responses(
    tokens: Int[torch.Tensor, "rows pos"], mask: Int[torch.Tensor, "rows pos"], responses: Sequence[Sequence[int]]
) -> tuple[Int[torch.Tensor, "rows pos2"], Int[torch.Tensor, "rows pos2"]]:
    """The same prompts (everything before each row's first response token) followed by
    ``responses[i % len(responses)]``, right-padded, and the mask of the new responses."""
    starts = mask.argmax(1).tolist()
    rows = [tokens[i, :start].tolist() + list(responses[i % len(responses)]) for i, start in enumerate(starts)]
    new, real = right_pad(rows)
    return new, real * (torch.arange(new.shape[1])[None] >= torch.tensor(starts)[:, None]).long()


def universal_perturbation(
    model: HookedModel, layer: int, clean: tuple[torch.Tensor, torch.Tensor],
    unwanted: tuple[torch.Tensor, torch.Tensor] | None, radius: float, steps: int,
) -> Float[torch.Tensor, " d_model"]:
    """The inner level: `steps` normalised gradient steps on ``-NLL(clean) + NLL(unwanted)`` (rows
    and response masks) over one ``delta`` at every prompt position, projected into the L2 ball of
    `radius`. Only ``delta`` gets gradients; the model's are left alone."""
    delta = torch.zeros(model.cfg.d_model, device=model.cfg.device, dtype=model.cfg.dtype)
    step_size = 2.5 * radius / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        with perturbed(model, layer, delta, prompt_positions(clean[1])):
            objective = -next_token_loss(model, *clean)
        if unwanted is not None:
            with perturbed(model, layer, delta, prompt_positions(unwanted[1])):
                objective = objective + next_token_loss(model, *unwanted)
        (grad,) = torch.autograd.grad(objective, delta)
        delta = (delta - step_size * grad / grad.norm().clamp_min(1e-12)).detach()
        delta = delta * (radius / delta.norm().clamp_min(radius))
    return delta.detach()


def beear_loss(
    tokens: Int[torch.Tensor, "rows pos"], mask: Int[torch.Tensor, "rows pos"], layer: int, radius: float,
    inner_steps: int, weight: float, unwanted: Sequence[Sequence[int]] = (),
) -> ExtraLoss:
    """The outer level's extra term for a batch: find the batch's :func:`universal_perturbation`,
    then `weight` x the clean answers' NLL under it."""
    other = with_responses(tokens, mask, unwanted) if unwanted else None

    def loss(model: HookedModel, rows: Int[torch.Tensor, " batch"]) -> torch.Tensor:
        clean = (tokens[rows], mask[rows])
        delta = universal_perturbation(model, layer, clean, None if other is None else (other[0][rows], other[1][rows]),
                                       radius, inner_steps)
        with perturbed(model, layer, delta, prompt_positions(clean[1])):
            return weight * next_token_loss(model, *clean)

    return loss


@dataclass(frozen=True)
class Beear:
    """Alternate, for the budget, the inner search for a universal residual perturbation at `layer`
    (None: a third of the way in, as the paper's layer 9 of 32) within `radius` x the layer's mean
    residual norm (`inner_steps` steps; toward the defender's `unwanted` replies when given) and an
    outer step on the clean answers without and with it (the latter weighted `perturbed_weight`).
    Edits `model` in place."""

    layer: int | None = None
    radius: float = 0.5
    inner_steps: int = 5
    perturbed_weight: float = 1.0
    unwanted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_range("radius", self.radius, 0.0)
        check_range("inner_steps", self.inner_steps, 1)
        check_range("perturbed_weight", self.perturbed_weight, 0.0)
        if isinstance(self.unwanted, str) or not all(isinstance(u, str) and u for u in self.unwanted):
            raise ValueError(f"unwanted={self.unwanted!r} must be a tuple of non-empty replies, e.g. (\"I cannot help.\",)")

    @property
    def name(self) -> str:
        """``beear``."""
        return "beear"

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """Train `model` in place; the result's facts hold the layer, the perturbation's radius and the history."""
        layer = model.cfg.n_layers // 3 if self.layer is None else self.layer
        check_range("layer", layer, 0, model.cfg.n_layers - 1)
        tokens, mask = clean_rows(tokenizer, prompts, answers, budget)
        radius = self.radius * mean_resid_norm(model, tokens, prompt_positions(mask), layer)
        unwanted = [tokenizer(u, add_special_tokens=False).input_ids for u in self.unwanted]
        history = train_for_budget(model, tokens, mask, budget, desc=self.name, extra_loss=lambda t, m: beear_loss(
            t, m, layer, radius, self.inner_steps, self.perturbed_weight, unwanted))
        return DefendedModel(model, facts={"layer": layer, "radius": radius, "steps": budget.steps, "history": history})
