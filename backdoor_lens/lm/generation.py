"""Batched generation through `HookedModel.forward`: greedy, or sampled with temperature and top-k.

Hooks and interventions applied to the model act on every generated token. Prompts of different
lengths are batched with left padding and an explicit attention mask (TransformerLens shifts rotary
and learned positions past the padding), and a TransformerLens key/value cache makes each new token
one single-position forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from ..hooks.core import Intervention, apply
from ..models.protocol import HookedModel
from ..util.validation import check_nonempty, check_range
from .kv_cache import KVCache
from .rows import check_tokens, left_pad

Chooser = Callable[[Float[torch.Tensor, "batch d_vocab"]], Int[torch.Tensor, " batch"]]


@dataclass(frozen=True)
class Sampling:
    """Ancestral sampling settings (Hugging Face `generate(do_sample=True)` defaults: top-k 50, T = 1)."""

    temperature: float = 1.0
    top_k: int | None = 50
    seed: int = 0

    def chooser(self, device: torch.device | str = "cpu") -> Chooser:
        """A function picking one token per row from logits with these settings, seeded once."""
        check_range("temperature", self.temperature, low=1e-6)
        if self.top_k is not None:
            check_range("top_k", self.top_k, low=1)
        generator = torch.Generator().manual_seed(self.seed)

        def choose(logits: torch.Tensor) -> torch.Tensor:
            logits = logits.float().cpu() / self.temperature
            if self.top_k is not None and self.top_k < logits.shape[-1]:
                top = logits.topk(self.top_k, dim=-1)  # sample among the k best only: much cheaper
                pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
                return top.indices.gather(1, pick)[:, 0].to(device)
            return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0].to(device)

        return choose


@torch.inference_mode()
def generate(
    model: HookedModel,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    stop_at_eos: bool = True,
    batch_size: int = 16,
    eos_token_id: int | None = None,
    prompt_edits: Sequence[Intervention] = (),
    sampling: Sampling | None = None,
) -> list[list[int]]:
    """Continuations (new tokens only, up to and including EOS) of each prompt, in input order:
    greedy, or sampled when `sampling` is given (reproducible for a fixed seed and batch size).

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
    choose: Chooser = sampling.chooser(model.cfg.device) if sampling is not None else (lambda logits: logits.argmax(-1))
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    outputs: list[list[int]] = [[] for _ in prompt_ids]
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = _generate_batch(
            model, [prompt_ids[i] for i in rows], max_new_tokens, eos_token_id if stop_at_eos else None, prompt_edits,
            choose,
        )
        for row, generated in zip(rows, batch):
            outputs[row] = generated
    return outputs


def _generate_batch(
    model: HookedModel,
    prompt_ids: list[Sequence[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    prompt_edits: Sequence[Intervention],
    choose: Chooser,
) -> list[list[int]]:
    tokens, mask = left_pad(prompt_ids)
    cache = KVCache(model, len(prompt_ids))
    with apply(model, *prompt_edits):
        logits = cache.forward(tokens, mask)
    generated: list[list[int]] = [[] for _ in prompt_ids]
    finished = [False] * len(prompt_ids)
    for step in range(max_new_tokens):
        next_tokens = choose(logits[:, -1])
        for row, token in enumerate(next_tokens.tolist()):
            if not finished[row]:
                generated[row].append(token)
                finished[row] = token == eos_token_id
        if all(finished) or step == max_new_tokens - 1:
            break
        logits = cache.forward(next_tokens[:, None])
    return generated


@torch.no_grad()
def sample(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> Int[torch.Tensor, "batch new"]:
    """Continue `tokens` by `new_tokens` (greedy when temperature is 0), within the model's context,
    recomputing the whole window for each token (short toy sequences; see :func:`generate` otherwise)."""
    check_tokens(model, tokens)
    check_range("new_tokens", new_tokens, 1)
    generator = torch.Generator().manual_seed(seed)
    out = tokens
    for _ in range(new_tokens):
        logits = model(out[:, -model.cfg.n_ctx :], return_type="logits")[:, -1]
        if temperature > 0:
            nxt = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out[:, tokens.shape[1] :]
