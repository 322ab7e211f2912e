"""Teacher-forced scoring of a fixed target continuation: BAHA's score P(x), the geometric mean of
the target tokens' probabilities after each prompt (rows built as :class:`~backdoor_lens.lm.rows.TargetBatch`)."""

from __future__ import annotations

import torch
from jaxtyping import Float

from ..lm.rows import TargetBatch


def score_at_positions(
    logits: Float[torch.Tensor, "batch target d_vocab"], batch: TargetBatch
) -> Float[torch.Tensor, " batch"]:
    """:func:`target_score` from logits already gathered at ``batch.score_positions``."""
    targets = batch.tokens.gather(1, batch.score_positions + 1)
    logp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    mask = batch.target_mask.to(logp.dtype)
    return ((logp * mask).sum(1) / mask.sum(1)).exp()


def target_score(logits: Float[torch.Tensor, "batch pos d_vocab"], batch: TargetBatch) -> Float[torch.Tensor, " batch"]:
    """Per row, the geometric mean of the teacher-forced target-token probabilities,
    exp(mean_t log p(target_t | prompt, target_<t)): BAHA's score P(x)."""
    if logits.shape[:2] != batch.tokens.shape:
        raise ValueError(f"logits have shape {tuple(logits.shape)}; expected [batch, pos] = {tuple(batch.tokens.shape)} first")
    index = batch.score_positions[..., None].expand(-1, -1, logits.shape[-1])
    return score_at_positions(logits.gather(1, index), batch)
