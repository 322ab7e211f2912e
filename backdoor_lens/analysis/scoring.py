"""Teacher-forced scoring of a fixed target continuation, for prompts of different lengths.

Rows are ``prompt + target`` right-padded to one length. Under causal attention a position only
attends to itself and earlier positions, so right padding never changes the logits at the prompt
and target positions: no attention mask is needed, and the same batch can be run through any
forward pass (hooked, patched, restarted with ``start_at_layer``) as plain tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from ..padding import right_pad
from ..validation import check_nonempty


@dataclass(frozen=True, eq=False)
class TargetBatch:
    """Right-padded ``prompt + target`` rows with, per row, the index of the last prompt token
    (`prompt_end`, where BAHA patches) and the number of target tokens (`target_len`)."""

    tokens: Int[torch.Tensor, "batch pos"]
    prompt_end: Int[torch.Tensor, " batch"]
    target_len: Int[torch.Tensor, " batch"]

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2:
            raise ValueError(f"tokens has shape {tuple(self.tokens.shape)}; expected [batch, pos]")
        check_nonempty("tokens", self.tokens)
        batch, pos = self.tokens.shape
        for name in ("prompt_end", "target_len"):
            value = getattr(self, name)
            if value.shape != (batch,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}; expected ({batch},), one per row of tokens")
        if (self.prompt_end < 0).any() or (self.target_len < 1).any():
            raise ValueError("prompt_end must be >= 0 and target_len >= 1 in every row")
        if (self.prompt_end + self.target_len >= pos).any():
            raise ValueError(f"prompt_end + target_len must be < pos={pos}: every row's target must fit in tokens")

    @classmethod
    def from_ids(
        cls,
        prompts: list[list[int]],
        targets: list[list[int]],
        pad_id: int,
        model: HookedTransformer | None = None,
    ) -> TargetBatch:
        """Concatenate each prompt with its target and right-pad with `pad_id`; with a `model`, also
        check that every row fits its context (`n_ctx`) and vocabulary."""
        check_nonempty("prompts", prompts)
        if len(prompts) != len(targets):
            raise ValueError(f"prompts has {len(prompts)} rows but targets has {len(targets)}; give one target per prompt")
        for name, rows in (("prompts", prompts), ("targets", targets)):
            empty = [i for i, row in enumerate(rows) if len(row) == 0]
            if empty:
                raise ValueError(f"{name} rows {empty[:8]} are empty; every prompt and target needs >= 1 token")
        rows = [list(p) + list(t) for p, t in zip(prompts, targets)]
        width = max(map(len, rows))
        if model is not None and width > model.cfg.n_ctx:
            raise ValueError(f"the longest prompt + target has {width} tokens; the model's n_ctx is {model.cfg.n_ctx}")
        batch = cls(
            right_pad(rows, pad_id)[0],
            torch.tensor([len(p) - 1 for p in prompts], dtype=torch.long),
            torch.tensor([len(t) for t in targets], dtype=torch.long),
        )
        if model is not None:
            batch.check_fits(model)
        return batch

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def check_fits(self, model: HookedTransformer) -> None:
        """Raise ValueError unless the rows fit `model`'s context length and vocabulary."""
        if self.tokens.shape[1] > model.cfg.n_ctx:
            raise ValueError(f"tokens have {self.tokens.shape[1]} positions; the model's n_ctx is {model.cfg.n_ctx}")
        if self.tokens.min() < 0 or self.tokens.max() >= model.cfg.d_vocab:
            raise ValueError(f"tokens hold ids outside [0, {model.cfg.d_vocab}), the model's vocabulary")

    @property
    def score_positions(self) -> Int[torch.Tensor, "batch target"]:
        """Positions whose logits predict target token t (prompt_end + t), clamped into the rows."""
        steps = torch.arange(int(self.target_len.max()), device=self.tokens.device)
        return (self.prompt_end[:, None] + steps).clamp(max=self.tokens.shape[1] - 2)

    @property
    def target_mask(self) -> Float[torch.Tensor, "batch target"]:
        """1 for real target tokens, 0 for the padding of shorter targets."""
        steps = torch.arange(int(self.target_len.max()), device=self.tokens.device)
        return (steps < self.target_len[:, None]).float()

    def to(self, device: torch.device | str) -> TargetBatch:
        """The same rows on `device`."""
        return TargetBatch(self.tokens.to(device), self.prompt_end.to(device), self.target_len.to(device))


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
