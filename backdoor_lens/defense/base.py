"""The one shape every trigger-agnostic defense has, so a grid can run them side by side.

A :class:`Defense` is a frozen dataclass of the defender's settings with a ``name`` and
``apply(model, tokenizer, prompts, answers, budget)``: the suspect model, its tokenizer, the
defender's clean prompts and the suspect model's own answers to them, and a :class:`Budget` shared
by every defense that trains (the same optimiser steps, learning rate and batch size). It never
receives the attacker's trigger or target. It returns a :class:`DefendedModel`: the (possibly edited
in place) model and the :class:`~backdoor_lens.lm.decoding.Decoder` to generate with.

A study loops as::

    for defense in defenses:
        with restored(model):                       # undo in-place edits afterwards
            defended = defense.apply(model, tokenizer, prompts, answers, budget)
            replies = defended.replies(tokenizer, triggered_prompts)   # ASR, through the decoder
            ...                                     # clean accuracy, perplexity: defended.model

Teacher-forced measures (clean accuracy, perplexity) read ``defended.model``; a decoding defense
leaves the model as it was, so they show what decoding alone cannot change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from ..lm.chat import chat_training_rows, decode, encode_prompts
from ..lm.decoding import Decoder, GreedyDecoder
from ..lm.training import ExtraLoss, TrainConfig, train
from ..models.protocol import HookedModel
from ..util.validation import check_names, check_nonempty, check_range

ExtraLossFactory = Callable[[Int[torch.Tensor, "rows pos"], Int[torch.Tensor, "rows pos"]], ExtraLoss]
"""Builds a training loss term from the rows training runs on and their response masks."""


@dataclass(frozen=True)
class Budget:
    """What every training defense gets alike: `steps` optimiser steps (AdamW, linear decay) of
    `batch_size` rows at learning rate `lr`, the modules kept `freeze` (names as in
    :class:`~backdoor_lens.lm.training.Freeze`), the longest answer trained on (`answer_tokens`), and the seed."""

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 16
    freeze: tuple[str, ...] = ("embed", "unembed")
    answer_tokens: int | None = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("steps", self.steps, 1)
        check_range("lr", self.lr, 0.0)
        check_range("batch_size", self.batch_size, 1)
        check_names("freeze", self.freeze)
        if self.answer_tokens is not None:
            check_range("answer_tokens", self.answer_tokens, 1)
        check_range("seed", self.seed, 0)

    def to_dict(self) -> dict[str, Any]:
        """The budget as a JSON-able dict (for fingerprints and summaries)."""
        return asdict(self)


@dataclass
class DefendedModel:
    """What a defense returns: the `model` to measure (the suspect model itself when the defense
    edits in place), the `decoder` that generation uses (greedy unless the defense is a decoding
    rule), and `facts` about the run (steps, pruned neurons, training history)."""

    model: HookedModel
    decoder: Decoder = field(default_factory=GreedyDecoder)
    facts: dict[str, Any] = field(default_factory=dict)

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int = 32, eos_token_id: int | None = None,
        batch_size: int = 16,
    ) -> list[list[int]]:
        """Continuations of `prompt_ids` through the decoder."""
        return self.decoder.generate(self.model, prompt_ids, max_new_tokens, eos_token_id, batch_size)

    def replies(
        self, tokenizer: PreTrainedTokenizerBase, messages: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16
    ) -> list[str]:
        """Decoded replies to chat `messages` through the decoder (what ASR is measured on)."""
        ids = self.generate(encode_prompts(tokenizer, messages), max_new_tokens, tokenizer.eos_token_id, batch_size)
        return decode(tokenizer, ids)


@runtime_checkable
class Defense(Protocol):
    """A trigger-agnostic defense: settings (a frozen dataclass) plus one way to apply them."""

    @property
    def name(self) -> str:
        """A short label for tables, e.g. ``fine-pruning`` or ``int4``."""

    def apply(
        self, model: HookedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
        answers: Sequence[str], budget: Budget,
    ) -> DefendedModel:
        """Defend `model` with the defender's clean `prompts`, the model's own `answers` to them and
        `budget` (defenses that need neither ignore them)."""


def check_pairs(prompts: Sequence[str], answers: Sequence[str]) -> None:
    """Raise ValueError unless there are clean prompts and exactly one answer for each."""
    check_nonempty("prompts", prompts)
    if len(prompts) != len(answers):
        raise ValueError(f"prompts has {len(prompts)} rows but answers has {len(answers)}; give one clean answer each")


def clean_rows(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], answers: Sequence[str], budget: Budget
) -> tuple[Int[torch.Tensor, "rows pos"], Int[torch.Tensor, "rows pos"]]:
    """The defender's clean data as right-padded chat rows and a response-only loss mask."""
    check_pairs(prompts, answers)
    return chat_training_rows(tokenizer, prompts, answers, max_response_tokens=budget.answer_tokens)


def budget_order(n_rows: int, budget: Budget) -> Int[torch.Tensor, " rows"]:
    """Row indices for exactly ``budget.steps`` full batches: seeded shuffles of all `n_rows` rows,
    one after another, cut to ``steps * batch_size``, so every defense trains the same number of steps
    however many rows its data has."""
    check_range("n_rows", n_rows, 1)
    generator = torch.Generator().manual_seed(budget.seed)
    need = budget.steps * budget.batch_size
    return torch.cat([torch.randperm(n_rows, generator=generator) for _ in range(-(-need // n_rows))])[:need]


def train_for_budget(
    model: HookedModel, tokens: Int[torch.Tensor, "rows pos"], mask: Int[torch.Tensor, "rows pos"], budget: Budget,
    desc: str, extra_loss: ExtraLossFactory | None = None, progress: bool = False,
) -> list[dict[str, Any]]:
    """Fine-tune `model` in place on `tokens` (response-only loss where `mask` is 1) for exactly
    ``budget.steps`` steps, adding ``extra_loss(rows_tokens, rows_mask)``'s term when given. Returns
    the training history."""
    order = budget_order(len(tokens), budget)
    tokens, mask = tokens[order], mask[order]
    config = TrainConfig(epochs=1, lr=budget.lr, batch_size=budget.batch_size, seed=budget.seed, freeze=budget.freeze)
    return train(model, tokens, config, desc=desc, progress=progress, loss_mask=mask,
                 extra_loss=None if extra_loss is None else extra_loss(tokens, mask))
