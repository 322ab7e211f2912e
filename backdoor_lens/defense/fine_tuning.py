"""Fine-tuning on clean data: the baseline every backdoor-removal paper compares against (e.g. Liu
et al., arXiv 1805.12185; BackdoorLLM's DefenseBox, arXiv 2408.12798). The suspect model trains on
the defender's clean prompts paired with its own answers (loss on the response only), in the hope
that the update overwrites what the trigger depends on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..models.protocol import HookedModel
from .base import Budget, DefendedModel, clean_rows, train_for_budget


@dataclass(frozen=True)
class CleanFineTuning:
    """Fine-tune in place for the budget on the clean prompts and the model's own answers; no
    settings of its own."""

    @property
    def name(self) -> str:
        """``fine-tuning``."""
        return "fine-tuning"

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """Train `model` in place; the result holds it, greedy decoding and the training history."""
        tokens, mask = clean_rows(tokenizer, prompts, answers, budget)
        history = train_for_budget(model, tokens, mask, budget, desc=self.name)
        return DefendedModel(model, facts={"steps": budget.steps, "history": history})
