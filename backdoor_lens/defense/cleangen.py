"""CleanGen (Li et al. 2024, "CleanGen: Mitigating Backdoor Attacks for Generation Tasks in Large
Language Models", arXiv 2406.12257): a backdoored model gives its target tokens far more probability
than a model without the backdoor does, so decode with both and distrust such tokens.

At each step the suspect model proposes its greedy token; when its probability under the suspect
model exceeds its probability under the reference model by a ratio above `alpha`, the token is
suspicious and the reference model's greedy token is emitted instead. Both models read the emitted
tokens, each through its own key/value cache. The reference must share the suspect model's
tokenizer: the base model the suspect was fine-tuned from where there is one, or any clean model.
The paper checks `k` proposed tokens at once for speed; this checks every token (``k = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from transformers import PreTrainedTokenizerBase

from ..lm.kv_cache import KVCache
from ..lm.rows import left_pad
from ..models.protocol import HookedModel
from ..util.validation import check_nonempty, check_range
from .base import Budget, DefendedModel


def cleangen_choice(
    suspect_logits: Float[torch.Tensor, "batch d_vocab"], reference_logits: Float[torch.Tensor, "batch d_vocab"],
    alpha: float,
) -> tuple[Int[torch.Tensor, " batch"], Bool[torch.Tensor, " batch"]]:
    """One step's tokens and which of them were replaced: the suspect's greedy token, or the
    reference's where ``p_suspect(token) / p_reference(token) > alpha``."""
    proposed = suspect_logits.argmax(-1)
    suspect_logp = suspect_logits.float().log_softmax(-1).gather(-1, proposed[:, None])[:, 0]
    reference_logp = reference_logits.float().log_softmax(-1).to(suspect_logp.device).gather(-1, proposed[:, None])[:, 0]
    suspicious = suspect_logp - reference_logp > math.log(alpha)
    return torch.where(suspicious, reference_logits.argmax(-1).to(proposed.device), proposed), suspicious


def _check(model: HookedModel, reference: HookedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    check_nonempty("prompt_ids", prompt_ids)
    check_range("max_new_tokens", max_new_tokens, low=1)
    if model.cfg.d_vocab != reference.cfg.d_vocab:
        raise ValueError(f"reference has d_vocab={reference.cfg.d_vocab} but the model has {model.cfg.d_vocab}; "
                         "CleanGen needs a reference model with the same tokenizer")
    if any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("prompt_ids holds an empty prompt; every prompt needs at least one token")
    longest = max(len(ids) for ids in prompt_ids) + max_new_tokens - 1
    if longest > min(model.cfg.n_ctx, reference.cfg.n_ctx):
        raise ValueError(f"max_new_tokens={max_new_tokens} makes the longest sequence {longest} tokens; the models' "
                         f"n_ctx are {model.cfg.n_ctx} and {reference.cfg.n_ctx}")


@torch.inference_mode()
def cleangen_generate(
    model: HookedModel, reference: HookedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
    alpha: float = 20.0, eos_token_id: int | None = None, batch_size: int = 16,
) -> tuple[list[list[int]], int]:
    """CleanGen continuations of each prompt (in input order; up to and including EOS when
    `eos_token_id` is given) and how many tokens the reference replaced."""
    _check(model, reference, prompt_ids, max_new_tokens)
    check_range("alpha", alpha, low=1.0)
    check_range("batch_size", batch_size, low=1)
    models = (model, reference)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    replaced = 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        tokens, mask = left_pad([prompt_ids[i] for i in rows])
        caches = [KVCache(m, len(rows)) for m in models]
        logits = [c.forward(tokens, attention_mask=mask)[:, -1] for c in caches]
        finished = [False] * len(rows)
        for step in range(max_new_tokens):
            chosen, suspicious = cleangen_choice(logits[0], logits[1], alpha)
            for i, (token, flagged) in enumerate(zip(chosen.tolist(), suspicious.tolist())):
                if not finished[i]:
                    outputs[rows[i]].append(token)
                    replaced += flagged
                    finished[i] = token == eos_token_id
            if all(finished) or step == max_new_tokens - 1:
                break
            logits = [c.forward(chosen[:, None])[:, -1] for c in caches]
    return outputs, replaced


@dataclass(frozen=True, eq=False)
class CleanGenDecoder:
    """Generate with the suspect model, replacing tokens it favours over `reference` by a ratio
    above `alpha` with the reference's choice (:func:`cleangen_generate`)."""

    reference: HookedModel
    alpha: float = 20.0

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, low=1.0)

    @property
    def name(self) -> str:
        """``cleangen``."""
        return "cleangen"

    def generate(
        self, model: HookedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
        eos_token_id: int | None = None, batch_size: int = 16,
    ) -> list[list[int]]:
        """CleanGen continuations of `prompt_ids`."""
        return cleangen_generate(model, self.reference, prompt_ids, max_new_tokens, self.alpha, eos_token_id, batch_size)[0]


@dataclass(frozen=True, eq=False)
class CleanGen(CleanGenDecoder):
    """Decode against `reference` (a model without the backdoor that shares the tokenizer) with
    suspicion threshold `alpha`. The weights are untouched; uses neither the clean data nor the budget."""

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """The unchanged `model` with a CleanGen decoder."""
        if model is self.reference:
            raise ValueError("reference is the suspect model itself; give a model without the backdoor")
        return DefendedModel(model, CleanGenDecoder(self.reference, self.alpha))
