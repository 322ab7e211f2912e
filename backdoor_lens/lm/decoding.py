"""How a defended model generates: the :class:`~backdoor_lens.lm.decoding.Decoder` protocol, greedy
decoding (the default) and sampling with a temperature. A decoding defense changes this step only and
leaves the weights alone.

Decoders are structural: anything with a matching ``generate`` serves, so measurement code (e.g. a
chat model's replies, hence ASR) takes one without importing this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..models.protocol import HookedModel
from ..util.validation import check_range
from .generation import Sampling, generate


@runtime_checkable
class Decoder(Protocol):
    """Turns prompts into continuations with a model: greedy, sampled, or guided by another model."""

    @property
    def name(self) -> str:
        """A short label for tables (e.g. ``greedy``, ``T=1.5``)."""

    def generate(
        self, model: HookedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
        eos_token_id: int | None = None, batch_size: int = 16,
    ) -> list[list[int]]:
        """New tokens after each prompt (up to and including EOS when `eos_token_id` is given), in input order."""


def _stops(eos_token_id: int | None) -> dict:
    """`generate`'s EOS arguments: stop at `eos_token_id`, or run the full length when there is none."""
    return {"eos_token_id": eos_token_id, "stop_at_eos": eos_token_id is not None}


@dataclass(frozen=True)
class GreedyDecoder:
    """The most likely token at every step (:func:`~backdoor_lens.lm.generation.generate`): how ASR
    is usually measured, and what a defended model without a decoding defense uses."""

    @property
    def name(self) -> str:
        """``greedy``."""
        return "greedy"

    def generate(
        self, model: HookedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
        eos_token_id: int | None = None, batch_size: int = 16,
    ) -> list[list[int]]:
        """Greedy continuations of `prompt_ids`."""
        return generate(model, prompt_ids, max_new_tokens, batch_size=batch_size, **_stops(eos_token_id))


@dataclass(frozen=True)
class SamplingDecoder:
    """Ancestral sampling with `sampling`'s temperature, top-k and seed (reproducible for a fixed seed
    and batch size)."""

    sampling: Sampling

    def __post_init__(self) -> None:
        check_range("temperature", self.sampling.temperature, low=1e-6)

    @property
    def name(self) -> str:
        """``T=<temperature>``."""
        return f"T={self.sampling.temperature:g}"

    def generate(
        self, model: HookedModel, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
        eos_token_id: int | None = None, batch_size: int = 16,
    ) -> list[list[int]]:
        """Sampled continuations of `prompt_ids`."""
        return generate(model, prompt_ids, max_new_tokens, batch_size=batch_size, sampling=self.sampling,
                        **_stops(eos_token_id))
