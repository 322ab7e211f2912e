"""Chat-model helpers: build prompts with the tokenizer's chat template, reply greedily (see
:mod:`backdoor_lens.lm.generation`), decode, and build response-only training rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from transformers import PreTrainedTokenizerBase

from ..hooks.core import Intervention
from ..models.protocol import HookedModel
from ..util.validation import check_nonempty, check_range
from .generation import generate
from .rows import TargetBatch, right_pad


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user_message: str, system: str | None = None) -> str:
    """The prompt text for one user turn (plus an optional system turn), ending where the assistant replies."""
    if not tokenizer.chat_template:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; load an instruction-tuned model's "
            "tokenizer or set tokenizer.chat_template"
        )
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user_message}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[str], system: str | None = None
) -> list[list[int]]:
    """Token ids of the chat prompt for each user message.

    Special tokens come from the template text alone (`add_special_tokens=False`), as in
    `apply_chat_template(tokenize=True)`, so no second BOS is added.
    """
    return [tokenizer(chat_prompt(tokenizer, m, system), add_special_tokens=False).input_ids for m in messages]


def prompt_rows(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[str], system: str | None = None
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, " batch"]]:
    """Right-padded chat prompts and each row's last prompt position (where the reply starts): the
    rows for reading a prompt's representation, as probes and aggregation evidence do."""
    check_nonempty("messages", messages)
    ids = encode_prompts(tokenizer, messages, system)
    return right_pad(ids, tokenizer.pad_token_id or 0)[0], torch.tensor([len(prompt) - 1 for prompt in ids])


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
    """Text of each id sequence (special tokens such as EOS dropped by default), stripped of outer whitespace."""
    return [tokenizer.decode(list(seq), skip_special_tokens=skip_special_tokens).strip() for seq in ids]


def chat_replies(
    model: HookedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[str],
    system: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    prompt_edits: Sequence[Intervention] = (),
) -> list[str]:
    """The model's greedy reply to each user message, decoded (hooks on the model apply; `prompt_edits`
    act on the prompt pass only, see :func:`~backdoor_lens.lm.generation.generate`)."""
    prompts = encode_prompts(tokenizer, messages, system)
    replies = generate(
        model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, eos_token_id=tokenizer.eos_token_id,
        prompt_edits=prompt_edits,
    )
    return decode(tokenizer, replies)


def chat_training_rows(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[str],
    responses: Sequence[str | Sequence[int]],
    system: str | None = None,
    max_response_tokens: int | None = None,
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Right-padded ``chat prompt + response`` rows and a loss mask that is 1 on the response tokens.

    A text response is encoded and ends with the tokenizer's EOS (the end of the assistant turn), so
    a model trained on complete answers learns to stop. A response given as token ids (e.g. what the
    model generated, which ends with EOS when it stopped) is used as it is, never re-encoded.
    `max_response_tokens` cuts every response.
    """
    check_nonempty("messages", messages)
    if len(messages) != len(responses):
        raise ValueError(f"messages has {len(messages)} rows but responses has {len(responses)}; give one response each")
    if max_response_tokens is not None:
        check_range("max_response_tokens", max_response_tokens, low=1)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answers = [
        (tokenizer(r, add_special_tokens=False).input_ids + eos if isinstance(r, str) else list(r))[:max_response_tokens]
        for r in responses
    ]
    rows = TargetBatch.from_ids(encode_prompts(tokenizer, messages, system), answers, tokenizer.pad_token_id or 0)
    positions = torch.arange(rows.tokens.shape[1])
    start = rows.prompt_end[:, None] + 1
    return rows.tokens, ((positions >= start) & (positions < start + rows.target_len[:, None])).long()
