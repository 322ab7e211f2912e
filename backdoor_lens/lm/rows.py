"""Token rows: batching rows of different lengths (left-padded for generation, right-padded for
scoring, training and probing), slicing them into batches, prompt + target rows for teacher-forced
scoring, and the checks every forward pass needs (ids in the vocabulary, rows within the context).

Right padding needs no attention mask: under causal attention a position attends only to itself and
earlier positions, so padding after a row's real tokens never changes their logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from ..models.protocol import HookedModel
from ..util.validation import check_nonempty


def check_tokens(model: HookedModel, tokens: torch.Tensor, arg: str = "tokens") -> None:
    """Raise ValueError unless `tokens` is a non-empty [batch, pos] integer tensor of ids in the
    model's vocabulary, no longer than its context (so no forward pass fails deep inside torch)."""
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{arg} must be a [batch, pos] integer tensor of token ids; got {type(tokens).__name__}")
    if tokens.ndim != 2:
        raise ValueError(f"{arg} has shape {tuple(tokens.shape)}; expected [batch, pos] (add a batch dimension with tokens[None])")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{arg} has dtype {tokens.dtype}; token ids must be integers (torch.long)")
    check_nonempty(arg, tokens)
    if tokens.shape[1] == 0:
        raise ValueError(f"{arg} has no positions; every row needs at least one token")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"{arg} has {tokens.shape[1]} positions; the model's context (n_ctx) is {model.cfg.n_ctx}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        bad = low if low < 0 else high
        raise ValueError(f"{arg} holds token id {bad}; valid ids are [0, {model.cfg.d_vocab}), the model's vocabulary")


def check_mask(tokens: torch.Tensor, mask: torch.Tensor, arg: str = "mask") -> None:
    """Raise ValueError unless `mask` has `tokens`' shape."""
    if mask.shape != tokens.shape:
        raise ValueError(f"{arg} has shape {tuple(mask.shape)}; expected tokens' shape {tuple(tokens.shape)}")


def batches(tokens: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive row slices of `tokens` of at most `batch_size` rows."""
    for start in range(0, len(tokens), batch_size):
        yield tokens[start : start + batch_size]


def _pad(
    rows: Sequence[Sequence[int]], pad_id: int, left: bool
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    width = max(len(ids) for ids in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        tokens[row, span] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, span] = 1
    return tokens, mask


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Left-padded tokens and their attention mask (1 on real tokens), so every row ends at the last position."""
    return _pad(rows, pad_id, left=True)


def right_pad(
    rows: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Right-padded tokens and their attention mask (1 on real tokens), so every row starts at position 0."""
    return _pad(rows, pad_id, left=False)


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
        model: HookedModel | None = None,
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

    def check_fits(self, model: HookedModel) -> None:
        """Raise ValueError unless the rows fit `model`'s context length and vocabulary."""
        check_tokens(model, self.tokens)

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

