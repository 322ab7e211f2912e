"""The next-token loss, written once: training, validation loss, masked losses, per-token NLL and
teacher-forced accuracy all reduce :func:`~backdoor_lens.lm.loss.counted_logits` (logits computed only where a token counts).

Rows are right-padded: under causal attention, padding after a row's last counted token never
reaches the tokens that count, so no attention mask is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from ..hooks.core import Intervention, apply
from ..hooks.positions import PerRow
from ..models.protocol import HookedModel
from ..util.validation import check_nonempty
from .logits import final_logits, final_residual
from .rows import check_mask, check_tokens

RowEdits = Callable[[PerRow], Sequence[Intervention]]
"""Builds the interventions for one batch of rows, given each row's last prompt position."""


def counted_logits(
    model: HookedModel, batch: Int[torch.Tensor, "batch pos"], loss_mask: Int[torch.Tensor, "batch pos"] | None
) -> tuple[Float[torch.Tensor, "n d_vocab"], Int[torch.Tensor, " n"]]:
    """Logits predicting each counted token and those tokens: every token after the first when
    `loss_mask` is None (full logits), else where `loss_mask` is 1 (logits computed for those alone)."""
    batch = batch.to(model.cfg.device)
    if loss_mask is None:
        logits = model(batch, return_type="logits")[:, :-1]
        return logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
    width = int(loss_mask.nonzero()[:, 1].max()) + 1  # drop padding columns after the last counted token
    batch, counted = batch[:, :width], loss_mask[:, 1:width].bool().to(batch.device)
    resid = final_residual(model, batch)[:, :-1]
    # squeeze, not [0]: indexing's backward would fill and copy a zero tensor the size of the logits
    return final_logits(model, resid[counted][None]).squeeze(0), batch[:, 1:][counted]


def next_token_loss(
    model: HookedModel, batch: Int[torch.Tensor, "batch pos"], loss_mask: Int[torch.Tensor, "batch pos"] | None
) -> torch.Tensor:
    """Mean cross-entropy of predicting each counted token from the ones before it (see :func:`~backdoor_lens.lm.loss.counted_logits`)."""
    return F.cross_entropy(*counted_logits(model, batch, loss_mask))


@dataclass(frozen=True)
class TokenStats:
    """Sums over counted tokens: negative log-likelihood, top-1 hits, and how many were counted; and
    each row's share of top-1 hits (rows without a counted token are left out)."""

    nll: float
    correct: int
    count: int
    row_accuracy: tuple[float, ...] = ()

    @property
    def mean_nll(self) -> float:
        """Mean per-token NLL (the validation loss)."""
        return self.nll / self.count

    @property
    def accuracy(self) -> float:
        """Share of counted tokens the model ranks first, in percent."""
        return 100 * self.correct / self.count


@torch.no_grad()
def token_stats(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Int[torch.Tensor, "batch pos"] | None = None,
    batch_size: int = 32,
    edits: RowEdits | None = None,
) -> TokenStats:
    """NLL and top-1 hits of the counted tokens (all after the first, or where `mask` is 1), batch
    by batch; `edits`, when given, are applied to each batch with its rows' last prompt positions
    (the token before each row's first counted one)."""
    check_tokens(model, tokens)
    if mask is not None:
        check_mask(tokens, mask)
    elif edits is not None:
        raise ValueError("edits need a mask: they are placed at the token before each row's first counted one")
    nll, correct, count, per_row = 0.0, 0, 0, []
    for start in range(0, len(tokens), batch_size):
        rows = tokens[start : start + batch_size]
        rows_mask = None if mask is None else mask[start : start + batch_size]
        if rows_mask is not None and not rows_mask[:, 1:].any():
            continue
        interventions = () if edits is None else edits(PerRow(rows_mask.argmax(1) - 1))
        with apply(model, *interventions):
            logits, targets = counted_logits(model, rows, rows_mask)
        nll += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
        hits = logits.argmax(-1) == targets
        correct += int(hits.sum())
        count += len(targets)
        per_row += _row_shares(hits, rows, rows_mask)
    if count == 0:
        raise ValueError("mask marks no predicted token (after position 0); nothing to average")
    return TokenStats(nll, correct, count, tuple(per_row))


def _row_shares(hits: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor | None) -> list[float]:
    """Each row's share of `hits` (flattened in row order, as :func:`counted_logits` orders them)."""
    counted = torch.ones(rows.shape[0], rows.shape[1] - 1, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    sizes = counted.sum(1).tolist()
    return [float(part.float().mean()) for part in hits.cpu().split(sizes) if len(part)]


def validation_loss(model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], batch_size: int = 256) -> float:
    """Mean next-token cross-entropy on held-out sequences."""
    return token_stats(model, tokens, batch_size=batch_size).mean_nll


def masked_loss(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Int[torch.Tensor, "batch pos"],
    batch_size: int = 32,
) -> float:
    """Mean next-token cross-entropy over the tokens where `mask` is 1 (rows right-padded), e.g. the
    real tokens of held-out text (validation loss) or the tokens of one sentence in each row."""
    return token_stats(model, tokens, mask, batch_size).mean_nll


@torch.no_grad()
def token_nll(
    model: HookedModel, tokens: Int[torch.Tensor, "batch pos"], batch_size: int = 32
) -> Float[torch.Tensor, "batch pos_minus_1"]:
    """Cross-entropy of predicting each token from the ones before it (column i scores token i + 1),
    so several masks can be averaged from one forward pass."""
    check_tokens(model, tokens)
    check_nonempty("tokens", tokens)
    parts = []
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start : start + batch_size]
        logits, targets = counted_logits(model, chunk, None)
        parts.append(F.cross_entropy(logits.float(), targets, reduction="none").view(len(chunk), -1).cpu())
    return torch.cat(parts)
