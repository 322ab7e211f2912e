"""Decoding temperature as a defense (BackdoorLLM's DefenseBox, arXiv 2408.12798, reports ASR under
sampling at several temperatures): a backdoor that wins the argmax may lose often enough when the
reply is sampled from a flattened distribution. The weights are untouched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..lm.decoding import SamplingDecoder
from ..lm.generation import Sampling
from ..models.protocol import HookedModel
from ..util.validation import check_range
from .base import Budget, DefendedModel


@dataclass(frozen=True)
class DecodingTemperature:
    """Sample replies at `temperature` (among the `top_k` best tokens; None: all), seeded by `seed`,
    instead of decoding greedily. Uses neither the clean data nor the budget."""

    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, low=1e-6)
        if self.top_k is not None:
            check_range("top_k", self.top_k, 1)

    @property
    def name(self) -> str:
        """``temperature-<T>``."""
        return f"temperature-{self.temperature:g}"

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """The unchanged `model` with a sampling decoder."""
        return DefendedModel(model, SamplingDecoder(Sampling(self.temperature, self.top_k, self.seed)))
