"""A chat model and its tokenizer as one object: chat-template prompts, batched greedy replies, ASR
and ATR, the clean-behaviour measure, and teacher-forced target rows, all under any edits.

Edits are given as an :data:`EditFactory`: a function from a ``Positions`` to interventions, because
the same edit lands at different positions in the two layouts used here. Generation left-pads prompts,
so ``-1`` is every prompt's last token; scoring right-pads rows, so each row gets its own last prompt
position (a ``PerRow``). Edits act on the prompt pass only, as BkdAttr's head ablation and backdoor
vector do (arXiv 2509.21761); generated tokens see them through the cached keys and values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from ..eval.asr import asr
from ..hooks.core import Intervention
from ..hooks.positions import Positions
from ..lm.chat import chat_replies, chat_training_rows, encode_prompts, prompt_rows
from ..lm.loss import token_stats
from ..lm.rows import TargetBatch
from ..util.validation import check_nonempty, check_range

EditFactory = Callable[[Positions], Sequence[Intervention]]
"""Builds the edits for one layout: position -1 in left-padded generation, PerRow in scoring rows."""


def built(edits: EditFactory | None, positions: Positions) -> Sequence[Intervention]:
    """The edits built for `positions` (none when `edits` is None)."""
    return edits(positions) if edits is not None else ()


@dataclass
class ChatModel:
    """A chat `model` with its `tokenizer`. `batch_size` rows run at a time; clean answers and the
    clean measure use at most `answer_tokens` tokens of each answer; ASR reads replies of
    `asr_tokens` new tokens (None: the target's length plus 3)."""

    model: HookedTransformer
    tokenizer: PreTrainedTokenizerBase
    batch_size: int = 32
    answer_tokens: int = 32
    asr_tokens: int | None = None

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_range("answer_tokens", self.answer_tokens, 1)
        if self.asr_tokens is not None:
            check_range("asr_tokens", self.asr_tokens, 1)

    def target_ids(self, target: str) -> list[int]:
        """Token ids of `target`, without special tokens."""
        check_nonempty("target", target)
        return self.tokenizer(target, add_special_tokens=False).input_ids

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each user message's chat prompt."""
        return encode_prompts(self.tokenizer, prompts)

    def replies(self, prompts: Sequence[str], max_new_tokens: int | None = None, edits: EditFactory | None = None) -> list[str]:
        """Greedy replies to `prompts` (at most `max_new_tokens`, default `answer_tokens`), with
        `edits` on the prompt pass."""
        return chat_replies(
            self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens or self.answer_tokens,
            batch_size=self.batch_size, prompt_edits=built(edits, -1),
        )

    def answers(self, prompts: Sequence[str]) -> list[str]:
        """The model's own greedy answers of at most `answer_tokens` tokens: the clean targets."""
        return self.replies(prompts, self.answer_tokens)

    def asr(self, prompts: Sequence[str], target: str, edits: EditFactory | None = None) -> float:
        """Fraction of greedy replies to `prompts` that contain `target` (ASR on triggered prompts, ATR on clean ones)."""
        window = self.asr_tokens or len(self.target_ids(target)) + 3
        return asr(self.replies(prompts, window, edits), target)

    @torch.no_grad()
    def clean_measures(
        self, prompts: Sequence[str], answers: Sequence[str], edits: EditFactory | None = None
    ) -> dict[str, float]:
        """Teacher-forced on the clean `answers`: mean per-token NLL, and the share (in %) of answer
        tokens the model ranks first (clean accuracy, in points)."""
        tokens, mask = chat_training_rows(self.tokenizer, prompts, answers, max_response_tokens=self.answer_tokens)
        stats = token_stats(self.model, tokens, mask, self.batch_size, edits=edits)
        return {"nll": stats.mean_nll, "accuracy": stats.accuracy}

    def clean_nll(self, prompts: Sequence[str], answers: Sequence[str], edits: EditFactory | None = None) -> float:
        """Mean per-token NLL of the clean `answers` (teacher-forced): the clean-behaviour measure."""
        return self.clean_measures(prompts, answers, edits)["nll"]

    def target_batch(self, prompts: Sequence[str], target: str) -> TargetBatch:
        """Chat prompts each followed by `target`, for teacher-forced scoring (BAHA, target probability)."""
        ids = self.encode(prompts)
        return TargetBatch.from_ids(ids, [self.target_ids(target)] * len(ids), self.tokenizer.pad_token_id or 0, self.model)

    def prompt_rows(self, prompts: Sequence[str]) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, " batch"]]:
        """Right-padded chat prompts and each row's last prompt position (for probes and features)."""
        return prompt_rows(self.tokenizer, prompts)
