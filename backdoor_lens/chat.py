"""Chat-model helpers: build prompts with the tokenizer's chat template, generate greedily, decode.

Generation runs through `HookedTransformer.forward`, so hooks and interventions applied to the model
act on every generated token. Prompts of different lengths are batched with left padding and an
explicit attention mask (TransformerLens shifts rotary and learned positions past the padding),
and a TransformerLens key/value cache makes each new token one single-position forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformers import PreTrainedTokenizerBase

from .analysis.scoring import TargetBatch
from .hooks.core import Intervention, apply
from .validation import check_nonempty, check_range


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


def left_pad(
    prompt_ids: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Left-padded tokens and their attention mask (1 on real tokens), so every prompt ends at the last position."""
    width = max(len(ids) for ids in prompt_ids)
    tokens = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        if ids:
            tokens[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            mask[row, width - len(ids) :] = 1
    return tokens, mask


@torch.inference_mode()
def greedy_generate(
    model: HookedTransformer,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    stop_at_eos: bool = True,
    batch_size: int = 16,
    eos_token_id: int | None = None,
    prompt_edits: Sequence[Intervention] = (),
) -> list[list[int]]:
    """Greedy continuations (new tokens only, up to and including EOS) of each prompt, in input order.

    Prompts are sorted by length and batched `batch_size` at a time to limit padding. `eos_token_id`
    defaults to the model tokenizer's; it is needed only when `stop_at_eos`. `prompt_edits` act on
    the prompt pass only (left-padded, so position -1 is every prompt's last token), as BkdAttr's
    head ablation and backdoor vector do; later tokens see them through the cached keys and values.
    """
    check_nonempty("prompt_ids", prompt_ids)
    check_range("max_new_tokens", max_new_tokens, low=1)
    check_range("batch_size", batch_size, low=1)
    empty = [i for i, ids in enumerate(prompt_ids) if len(ids) == 0]
    if empty:
        raise ValueError(f"prompt_ids[{empty[0]}] is empty; every prompt needs at least one token")
    longest = max(len(ids) for ids in prompt_ids) + max_new_tokens - 1
    if longest > model.cfg.n_ctx:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} makes the longest sequence {longest} tokens; the model's n_ctx is "
            f"{model.cfg.n_ctx}"
        )
    if stop_at_eos and eos_token_id is None:
        eos_token_id = model.tokenizer.eos_token_id if model.tokenizer is not None else None
        if eos_token_id is None:
            raise ValueError("eos_token_id is None and the model has no tokenizer EOS; pass eos_token_id or stop_at_eos=False")
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = _generate_batch(
            model, [prompt_ids[i] for i in rows], max_new_tokens, eos_token_id if stop_at_eos else None, prompt_edits
        )
        for row, generated in zip(rows, batch):
            outputs[row] = generated
    return outputs


def _generate_batch(
    model: HookedTransformer,
    prompt_ids: list[Sequence[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    prompt_edits: Sequence[Intervention],
) -> list[list[int]]:
    device = model.cfg.device
    tokens, mask = left_pad(prompt_ids)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(prompt_ids))
    with apply(model, *prompt_edits):
        logits = model(tokens.to(device), attention_mask=mask.to(device), past_kv_cache=cache)
    generated: list[list[int]] = [[] for _ in prompt_ids]
    finished = [False] * len(prompt_ids)
    for step in range(max_new_tokens):
        next_tokens = logits[:, -1].argmax(-1)
        for row, token in enumerate(next_tokens.tolist()):
            if not finished[row]:
                generated[row].append(token)
                finished[row] = token == eos_token_id
        if all(finished) or step == max_new_tokens - 1:
            break
        step_mask = torch.ones(len(prompt_ids), 1, dtype=torch.long, device=device)
        logits = model(next_tokens[:, None], attention_mask=step_mask, past_kv_cache=cache)
    return generated


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
    """Text of each id sequence (special tokens such as EOS dropped by default), stripped of outer whitespace."""
    return [tokenizer.decode(list(seq), skip_special_tokens=skip_special_tokens).strip() for seq in ids]


def chat_replies(
    model: HookedTransformer,
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[str],
    system: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    prompt_edits: Sequence[Intervention] = (),
) -> list[str]:
    """The model's greedy reply to each user message, decoded (hooks on the model apply; `prompt_edits`
    act on the prompt pass only, see :func:`greedy_generate`)."""
    prompts = encode_prompts(tokenizer, messages, system)
    replies = greedy_generate(
        model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, eos_token_id=tokenizer.eos_token_id,
        prompt_edits=prompt_edits,
    )
    return decode(tokenizer, replies)


def chat_training_rows(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[str],
    responses: Sequence[str],
    system: str | None = None,
    max_response_tokens: int | None = None,
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Right-padded ``chat prompt + response`` rows and a loss mask that is 1 on the response tokens.

    A response ends with the tokenizer's EOS (the end of the assistant turn) unless
    `max_response_tokens` cuts it, so a model trained on complete answers learns to stop.
    """
    check_nonempty("messages", messages)
    if len(messages) != len(responses):
        raise ValueError(f"messages has {len(messages)} rows but responses has {len(responses)}; give one response each")
    if max_response_tokens is not None:
        check_range("max_response_tokens", max_response_tokens, low=1)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answers = [(tokenizer(r, add_special_tokens=False).input_ids + eos)[:max_response_tokens] for r in responses]
    rows = TargetBatch.from_ids(encode_prompts(tokenizer, messages, system), answers, tokenizer.pad_token_id or 0)
    positions = torch.arange(rows.tokens.shape[1])
    start = rows.prompt_end[:, None] + 1
    return rows.tokens, ((positions >= start) & (positions < start + rows.target_len[:, None])).long()
