"""A chat model and its tokenizer as one object: chat-template prompts, batched greedy replies, ASR
and ATR, the clean-behaviour measure, and teacher-forced target rows, all under any edits.

Edits are given as an :data:`EditFactory`: a function from a ``Positions`` to interventions, because
the same edit lands at different positions in the two layouts used here. Generation left-pads prompts,
so ``-1`` is every prompt's last token; scoring right-pads rows, so each row gets its own last prompt
position (a ``PerRow``). Edits act on the prompt pass only, as BkdAttr's head ablation and backdoor
vector do (arXiv 2509.21761); generated tokens see them through the cached keys and values.

Attack success is read from a window of `asr_tokens` new tokens (32 by default, as BackdoorLLM,
arXiv 2408.12798, scores generations), two ways: the target string itself, and a keyword check
(:func:`~backdoor_lens.eval.attack_success.keyword_rule`: refusal phrases for a refusal target, else the target's
content words), so a model that delays or paraphrases the target still counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from ..eval.attack_success import keyword_rule, substring_hits
from ..hooks.core import Intervention
from ..hooks.positions import Positions
from ..lm.chat import chat_training_rows, decode, encode_prompts, prompt_rows
from ..lm.decoding import Decoder
from ..lm.generation import generate
from ..lm.loss import token_stats
from ..lm.rows import TargetBatch
from ..models.protocol import HookedModel
from ..util.validation import check_choice, check_nonempty, check_range

EditFactory = Callable[[Positions], Sequence[Intervention]]
"""Builds the edits for one layout: position -1 in left-padded generation, PerRow in scoring rows."""
MEASURES = ("substring", "keyword")


def built(edits: EditFactory | None, positions: Positions) -> Sequence[Intervention]:
    """The edits built for `positions` (none when `edits` is None)."""
    return edits(positions) if edits is not None else ()


@dataclass(frozen=True)
class AttackOutcomes:
    """Per reply, whether it carries the target: by exact `substring` and by `keyword` rule (1 or 0)."""

    substring: list[int]
    keyword: list[int]

    @classmethod
    def of(cls, replies: Sequence[str], target: str) -> "AttackOutcomes":
        """Score `replies` against `target` both ways."""
        return cls(substring_hits(replies, target), keyword_rule(target).hits(replies))

    def rate(self, by: str = "substring") -> float:
        """The share of replies that hit, by one measure."""
        check_choice("by", by, MEASURES)
        hits = getattr(self, by)
        return sum(hits) / len(hits)


@dataclass
class ChatModel:
    """A chat `model` with its `tokenizer`. `batch_size` rows run at a time; clean answers are at most
    `answer_tokens` long; attack success reads replies of `asr_tokens` new tokens."""

    model: HookedModel
    tokenizer: PreTrainedTokenizerBase
    batch_size: int = 32
    answer_tokens: int = 32
    asr_tokens: int = 32
    decoder: Decoder | None = None
    """How replies are generated (a decoding defense's sampler, say); None: greedy, with edits allowed."""

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, 1)
        check_range("answer_tokens", self.answer_tokens, 1)
        check_range("asr_tokens", self.asr_tokens, 1)

    def target_ids(self, target: str) -> list[int]:
        """Token ids of `target`, without special tokens."""
        check_nonempty("target", target)
        return self.tokenizer(target, add_special_tokens=False).input_ids

    def encode(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids of each user message's chat prompt."""
        check_nonempty("prompts", prompts)
        return encode_prompts(self.tokenizer, prompts)

    def reply_ids(
        self, prompts: Sequence[str], max_new_tokens: int | None = None, edits: EditFactory | None = None
    ) -> list[list[int]]:
        """Reply token ids (EOS included where the model stopped), at most `max_new_tokens` (default
        `answer_tokens`): greedy with `edits` on the prompt pass, or by the `decoder` (without edits)."""
        if self.decoder is not None:
            if edits is not None:
                raise ValueError("edits act on greedy generation's prompt pass; give a decoder or edits, not both")
            return self.decoder.generate(self.model, self.encode(prompts), max_new_tokens or self.answer_tokens,
                                         self.tokenizer.eos_token_id, self.batch_size)
        return generate(self.model, self.encode(prompts), max_new_tokens=max_new_tokens or self.answer_tokens,
                        batch_size=self.batch_size, eos_token_id=self.tokenizer.eos_token_id,
                        prompt_edits=built(edits, -1))

    def replies(self, prompts: Sequence[str], max_new_tokens: int | None = None, edits: EditFactory | None = None) -> list[str]:
        """Greedy replies to `prompts`, decoded (see :meth:`reply_ids`)."""
        return decode(self.tokenizer, self.reply_ids(prompts, max_new_tokens, edits))

    def answers(self, prompts: Sequence[str]) -> list[str]:
        """The model's own greedy answers of at most `answer_tokens` tokens, decoded."""
        return self.replies(prompts, self.answer_tokens)

    def attack_outcomes(self, prompts: Sequence[str], target: str, edits: EditFactory | None = None) -> AttackOutcomes:
        """Whether each reply (a window of `asr_tokens` new tokens) carries `target`, both ways."""
        return AttackOutcomes.of(self.replies(prompts, self.asr_tokens, edits), target)

    def asr(self, prompts: Sequence[str], target: str, edits: EditFactory | None = None, by: str = "substring") -> float:
        """Share of replies to `prompts` that carry `target` (ASR on triggered prompts, ATR on clean ones)."""
        return self.attack_outcomes(prompts, target, edits).rate(by)

    @torch.no_grad()
    def clean_measures(
        self, prompts: Sequence[str], answers: Sequence[str | Sequence[int]], edits: EditFactory | None = None
    ) -> dict[str, float]:
        """Teacher-forced on clean `answers` (the token ids a model generated, scored as generated, or
        text): mean per-token NLL, the share (in %) of answer tokens ranked first (clean accuracy),
        and each answer's share (``per_prompt``, for intervals over prompts)."""
        tokens, mask = chat_training_rows(self.tokenizer, prompts, answers, max_response_tokens=self.answer_tokens)
        stats = token_stats(self.model, tokens, mask, self.batch_size, edits=edits)
        return {"nll": stats.mean_nll, "accuracy": stats.accuracy, "per_prompt": list(stats.row_accuracy)}

    def clean_nll(self, prompts: Sequence[str], answers: Sequence[str | Sequence[int]], edits: EditFactory | None = None) -> float:
        """Mean per-token NLL of the clean `answers`, teacher-forced (see :meth:`clean_measures`)."""
        return self.clean_measures(prompts, answers, edits)["nll"]

    def target_batch(self, prompts: Sequence[str], target: str) -> TargetBatch:
        """Chat prompts each followed by `target`, for teacher-forced scoring (BAHA, target probability)."""
        ids = self.encode(prompts)
        return TargetBatch.from_ids(ids, [self.target_ids(target)] * len(ids), self.tokenizer.pad_token_id or 0, self.model)

    def prompt_rows(self, prompts: Sequence[str]) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, " batch"]]:
        """Right-padded chat prompts and each row's last prompt position (for probes and features)."""
        return prompt_rows(self.tokenizer, prompts)
