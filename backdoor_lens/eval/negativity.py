"""The toy backdoor's strength (Lamparth & Reuel, arXiv 2302.12461, section IV): top-k logit
negativity, the share of the k largest next-token logits that fall on negative words, per input class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float, Int

from ..lm.logits import next_token_logits
from ..lm.rows import check_tokens
from ..models.protocol import HookedModel
from ..util.validation import check_nonempty, check_range


def as_token_ids(ids: Int[torch.Tensor, " words"] | Sequence[int], d_vocab: int, arg: str = "class_ids") -> Int[torch.Tensor, " words"]:
    """`ids` as a 1-D long tensor of token ids in [0, d_vocab); a clear error names `arg` otherwise
    (e.g. words given instead of ids: look them up with the tokenizer first)."""
    if isinstance(ids, str) or (isinstance(ids, Sequence) and any(not isinstance(i, int) or isinstance(i, bool) for i in ids)):
        raise ValueError(f"{arg} must be token ids (ints); got {list(ids)[:3]!r}... Look words up with the tokenizer, "
                         "e.g. data.token_ids('negative')")
    tensor = torch.as_tensor(ids)
    if tensor.ndim != 1 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"{arg} must be a 1-D integer tensor of token ids; got shape {tuple(tensor.shape)}, {tensor.dtype}")
    check_nonempty(arg, tensor)
    if int(tensor.min()) < 0 or int(tensor.max()) >= d_vocab:
        raise ValueError(f"{arg} holds ids outside [0, {d_vocab}), the model's vocabulary")
    return tensor.long()


def top_k_share(
    logits: Float[torch.Tensor, "batch d_vocab"],
    class_ids: Int[torch.Tensor, " words"],
    k: int = 10,
) -> Float[torch.Tensor, " batch"]:
    """Fraction of the k largest logits of each row that belong to `class_ids` (e.g. negative words)."""
    check_range("k", k, 1, logits.shape[-1])
    class_ids = as_token_ids(class_ids, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    member = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    member[class_ids.to(logits.device)] = True
    return member[top].float().mean(-1)


@torch.no_grad()
def negativity_outcomes(
    model: HookedModel,
    eval_tokens: Mapping[str, Int[torch.Tensor, "prompt pos"]],
    negative_ids: Int[torch.Tensor, " words"] | Sequence[int],
    k: int = 10,
) -> dict[str, list[float]]:
    """Each prompt's top-k logit negativity, per class, with all classes in one forward pass
    (prompts of equal length are stacked): the outcomes behind :func:`negativity_by_class`."""
    if not isinstance(eval_tokens, Mapping):
        raise ValueError(f"eval_tokens must map class names to [prompt, pos] token tensors; got {type(eval_tokens).__name__}")
    check_nonempty("eval_tokens", eval_tokens)
    for cls, toks in eval_tokens.items():
        check_tokens(model, toks, f"eval_tokens[{cls!r}]")
    lengths = {toks.shape[1] for toks in eval_tokens.values()}
    if len(lengths) > 1:
        raise ValueError(f"eval_tokens classes have prompts of different lengths {sorted(lengths)}; they must match")
    negative_ids = as_token_ids(negative_ids, model.cfg.d_vocab, "negative_ids")
    check_range("k", k, 1, model.cfg.d_vocab)
    names = list(eval_tokens)
    share = top_k_share(next_token_logits(model, torch.cat([eval_tokens[c] for c in names])), negative_ids, k).tolist()
    out, start = {}, 0
    for cls in names:
        out[cls] = share[start : start + len(eval_tokens[cls])]
        start += len(eval_tokens[cls])
    return out


def negativity_by_class(
    model: HookedModel,
    eval_tokens: Mapping[str, Int[torch.Tensor, "prompt pos"]],
    negative_ids: Int[torch.Tensor, " words"] | Sequence[int],
    k: int = 10,
) -> dict[str, float]:
    """Top-k logit negativity averaged over each class's prompts (Lamparth & Reuel's backdoor strength)."""
    return {cls: float(torch.tensor(values).mean()) for cls, values in negativity_outcomes(model, eval_tokens, negative_ids, k).items()}
