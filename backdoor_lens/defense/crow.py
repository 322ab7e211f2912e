"""CROW (Min et al. 2024, "CROW: Eliminating Backdoors from Large Language Models via Internal
Consistency Regularization", arXiv 2411.12768): a trigger makes hidden states jump between
consecutive layers where clean inputs change them smoothly, so fine-tune on clean data with a term
that keeps consecutive layers' hidden states aligned, even under small adversarial perturbations of
the input embeddings.

The consistency loss is the mean over real tokens and consecutive layer pairs of
``1 - cos(resid_post[l], resid_post[l + 1])``. Each step first finds an FGSM perturbation of the
token embeddings (``hook_embed``), ``epsilon * sign(grad)`` of that loss, then adds `weight` times the
loss under the perturbation to the clean response-only loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from transformers import PreTrainedTokenizerBase

from ..lm.training import ExtraLoss
from ..models.protocol import HookedModel
from ..util.validation import check_range
from .base import Budget, DefendedModel, clean_rows, train_for_budget


def real_tokens(mask: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos"]:
    """1 on every position up to each row's last response token (the prompt and the response), 0 on
    the right padding after it."""
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    return (torch.arange(mask.shape[1])[None] <= last[:, None]).long()


def consistency_loss(
    model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], real: Int[torch.Tensor, "batch pos"],
    embed_delta: Float[torch.Tensor, "batch pos d_model"] | None = None,
) -> torch.Tensor:
    """Mean of ``1 - cos(resid_post[l], resid_post[l + 1])`` over consecutive layers and the tokens
    where `real` is 1, with `embed_delta` added to the token embeddings when given."""
    if model.cfg.n_layers < 2:
        raise ValueError(f"consistency needs two layers or more; the model has n_layers={model.cfg.n_layers}")
    states: list[torch.Tensor] = []
    hooks = [(f"blocks.{layer}.hook_resid_post", lambda act, hook: states.append(act)) for layer in range(model.cfg.n_layers)]
    if embed_delta is not None:
        hooks.append(("hook_embed", lambda act, hook: act + embed_delta.to(act)))
    model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
    weight = real.to(states[0].device, states[0].dtype)
    gaps = torch.stack([1 - F.cosine_similarity(a, b, dim=-1) for a, b in pairwise(states)])
    return (gaps * weight).sum() / (weight.sum() * len(gaps))


def fgsm_embedding_delta(
    model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], real: Int[torch.Tensor, "batch pos"], epsilon: float
) -> Float[torch.Tensor, "batch pos d_model"]:
    """``epsilon * sign(d loss / d embedding)`` of :func:`consistency_loss`: the one-step perturbation
    of the token embeddings that most breaks consistency (the model's own gradients are left alone)."""
    shape = (*tokens.shape, model.cfg.d_model)
    delta = torch.zeros(shape, device=model.cfg.device, dtype=model.cfg.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(consistency_loss(model, tokens, real, delta), delta)
    return epsilon * grad.sign()


def crow_loss(
    tokens: Int[torch.Tensor, "rows pos"], mask: Int[torch.Tensor, "rows pos"], weight: float, epsilon: float
) -> ExtraLoss:
    """The training term: `weight` x :func:`consistency_loss` of a batch's rows under their FGSM
    embedding perturbation (rows cut after their last response token)."""
    real = real_tokens(mask)

    def loss(model: HookedModel, rows: Int[torch.Tensor, " batch"]) -> torch.Tensor:
        width = int(real[rows].sum(1).max())
        batch, batch_real = tokens[rows, :width], real[rows, :width]
        delta = fgsm_embedding_delta(model, batch, batch_real, epsilon)
        return weight * consistency_loss(model, batch, batch_real, delta)

    return loss


@dataclass(frozen=True)
class Crow:
    """Fine-tune in place for the budget on clean data plus `weight` x the layer-consistency loss
    under an FGSM embedding perturbation of size `epsilon` (the paper's epsilon is 0.1)."""

    weight: float = 1.0
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        check_range("weight", self.weight, 0.0)
        check_range("epsilon", self.epsilon, 0.0)

    @property
    def name(self) -> str:
        """``crow``."""
        return "crow"

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """Train `model` in place; the result holds it, greedy decoding and the training history."""
        tokens, mask = clean_rows(tokenizer, prompts, answers, budget)
        history = train_for_budget(model, tokens, mask, budget, desc=self.name,
                                   extra_loss=lambda t, m: crow_loss(t, m, self.weight, self.epsilon))
        return DefendedModel(model, facts={"steps": budget.steps, "history": history})
