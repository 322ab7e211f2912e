"""Backdoor metrics for toy models: top-k logit negativity per input class, validation loss, samples."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from .collect import batches
from .train import next_token_loss
from .validation import check_nonempty, check_range


def top_k_share(
    logits: Float[torch.Tensor, "batch d_vocab"],
    class_ids: Int[torch.Tensor, " words"],
    k: int = 10,
) -> Float[torch.Tensor, " batch"]:
    """Fraction of the k largest logits of each row that belong to `class_ids` (e.g. negative words)."""
    check_range("k", k, 1, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    member = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    member[class_ids.to(logits.device)] = True
    return member[top].float().mean(-1)


@torch.no_grad()
def next_token_logits(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch d_vocab"]:
    """Logits of the token after each row's last position."""
    return model(tokens, return_type="logits")[:, -1]


@torch.no_grad()
def negativity_by_class(
    model: HookedTransformer,
    eval_tokens: Mapping[str, Int[torch.Tensor, "prompt pos"]],
    negative_ids: Int[torch.Tensor, " words"],
    k: int = 10,
) -> dict[str, float]:
    """Top-k logit negativity averaged over each class's prompts, with all classes in one forward pass
    (prompts of equal length are stacked)."""
    check_nonempty("eval_tokens", eval_tokens)
    for cls, toks in eval_tokens.items():
        check_nonempty(f"eval_tokens[{cls!r}]", toks)
    names = list(eval_tokens)
    stacked = torch.cat([eval_tokens[c] for c in names])
    share = top_k_share(next_token_logits(model, stacked), negative_ids, k)
    out, start = {}, 0
    for cls in names:
        n = len(eval_tokens[cls])
        out[cls] = float(share[start : start + n].mean())
        start += n
    return out


@torch.no_grad()
def validation_loss(model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], batch_size: int = 256) -> float:
    """Mean next-token cross-entropy on held-out sequences."""
    check_nonempty("tokens", tokens)
    total, count = 0.0, 0
    for chunk in batches(tokens, batch_size):
        logits = model(chunk, return_type="logits")[:, :-1]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum").item()
        count += chunk[:, 1:].numel()
    return total / count


@torch.no_grad()
def token_nll(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], batch_size: int = 32
) -> Float[torch.Tensor, "batch pos_minus_1"]:
    """Cross-entropy of predicting each token from the ones before it (column i scores token i + 1),
    so several masks can be averaged from one forward pass."""
    check_nonempty("tokens", tokens)
    parts = []
    for chunk in batches(tokens, batch_size):
        chunk = chunk.to(model.cfg.device)
        logits = model(chunk, return_type="logits")[:, :-1]
        parts.append(F.cross_entropy(logits.transpose(1, 2).float(), chunk[:, 1:], reduction="none").cpu())
    return torch.cat(parts)


@torch.no_grad()
def masked_loss(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Int[torch.Tensor, "batch pos"],
    batch_size: int = 32,
) -> float:
    """Mean next-token cross-entropy over the tokens where `mask` is 1 (rows right-padded), e.g. the
    real tokens of held-out text (validation loss) or the tokens of one sentence in each row."""
    check_nonempty("tokens", tokens)
    if mask.shape != tokens.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected tokens' shape {tuple(tokens.shape)}")
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        rows, rows_mask = tokens[start : start + batch_size], mask[start : start + batch_size]
        n = int(rows_mask[:, 1:].sum())
        if n:
            total, count = total + float(next_token_loss(model, rows, rows_mask)) * n, count + n
    if count == 0:
        raise ValueError("mask marks no predicted token (after position 0); nothing to average")
    return total / count


@torch.no_grad()
def sample(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
) -> Int[torch.Tensor, "batch new"]:
    """Continue `tokens` by `new_tokens` (greedy when temperature is 0), within the model's context."""
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
