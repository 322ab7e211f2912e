"""Batch token rows of different lengths into one tensor: left-padded for generation (every prompt
ends at the last position) or right-padded for scoring, training and probing (every row starts at 0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Int


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
