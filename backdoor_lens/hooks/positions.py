"""Which token positions an intervention or a collection touches: the one ``Positions`` type.

``Positions`` is one of:

- ``None``: every position;
- an ``int`` (e.g. ``-1``) or a tuple of ints: the same positions in every row;
- :class:`PerRow`: one position per batch row (a 1-D integer tensor is accepted wherever
  ``Positions`` is and becomes a ``PerRow``).

Shape pitfalls, stated once:

- Negative ints count from the end of the *padded* row. In a left-padded batch (generation) ``-1`` is
  every prompt's last token; in a right-padded batch (scoring, training, probing) it is padding for
  every row but the longest, so use ``PerRow`` with each row's last real position there.
- Collecting at an ``int`` drops the position dimension (``[batch, d]``); at a tuple it keeps it
  (``[batch, n_positions, d]``); at ``PerRow`` it gives ``[batch, d]``; at ``None``, ``[batch, pos, d]``.
- A ``PerRow`` has one entry per row of the batch it is used with: when a function runs its rows in
  batches, it cuts the ``PerRow`` to match (see :func:`split_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from ..util.validation import check_nonempty


@dataclass(frozen=True, eq=False)
class PerRow:
    """One position per batch row, e.g. each prompt's last token (``TargetBatch.prompt_end``)."""

    positions: Int[torch.Tensor, " batch"]

    def __post_init__(self) -> None:
        if not isinstance(self.positions, torch.Tensor) or self.positions.ndim != 1 or self.positions.dtype.is_floating_point:
            shape = tuple(self.positions.shape) if isinstance(self.positions, torch.Tensor) else type(self.positions).__name__
            raise ValueError(f"positions must be a 1-D integer tensor (one per row); got {shape}")
        check_nonempty("positions", self.positions)

    def __len__(self) -> int:
        return len(self.positions)


Positions = int | tuple[int, ...] | PerRow | None


def as_positions(value: object, arg: str = "positions") -> Positions:
    """`value` as a ``Positions``: ints, tuples / lists of ints, None and PerRow as they are, a 1-D
    integer tensor as PerRow; anything else is refused with an error naming `arg`."""
    if value is None or isinstance(value, PerRow):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{arg}={value!r} is not a position; use an int, a tuple of ints, a PerRow or None")
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 and not value.dtype.is_floating_point:
            return int(value)
        return PerRow(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    raise TypeError(
        f"{arg}={value!r} is not valid; use None (all positions), an int, a tuple of ints, or one position per row "
        "(a 1-D integer tensor or PerRow)"
    )


def normalise_positions(intervention: object) -> None:
    """In a frozen dataclass's ``__post_init__``: its ``positions`` field checked and made a ``Positions``."""
    object.__setattr__(intervention, "positions", as_positions(intervention.positions))


def check_in_context(positions: Positions, n_ctx: int, arg: str = "positions") -> None:
    """Raise ValueError if a fixed position can never exist in a sequence of at most `n_ctx` tokens."""
    fixed = [positions] if isinstance(positions, int) else list(positions) if isinstance(positions, tuple) else []
    fixed += positions.positions.tolist() if isinstance(positions, PerRow) else []
    bad = [p for p in fixed if not -n_ctx <= p < n_ctx]
    if bad:
        raise ValueError(f"{arg} holds position {bad[0]}; valid positions lie in [-{n_ctx}, {n_ctx}) (the model's n_ctx)")


def row_index(positions: Positions, act: torch.Tensor, name: str) -> tuple:
    """An index into `act` ([batch, pos, ...]) selecting `positions` of every row (all when None),
    keeping the position dimension for fixed positions; errors name the hook point `name`."""
    length = act.shape[1]
    if positions is None:
        return (slice(None), slice(None))
    if not isinstance(positions, PerRow):
        fixed = [positions] if isinstance(positions, int) else list(positions)
        bad = [p for p in fixed if not -length <= p < length]
        if bad:
            raise ValueError(f"position {bad[0]} is out of range for {name}, whose sequences have {length} positions; "
                             f"valid: [-{length}, {length})")
        return (slice(None), fixed)
    pos = positions.positions.to(act.device)
    if len(pos) != act.shape[0]:
        raise ValueError(f"PerRow has {len(pos)} positions but {name} has batch size {act.shape[0]}; give one per row")
    if (pos < -length).any() or (pos >= length).any():
        raise ValueError(f"PerRow positions must lie in [-{length}, {length}) for {name}, whose sequences have {length} positions")
    return (torch.arange(act.shape[0], device=act.device), pos)


def select(act: torch.Tensor, positions: Positions, name: str = "activation") -> torch.Tensor:
    """`act` ([batch, pos, ...]) at `positions` (see the module docstring for the resulting shapes)."""
    index = row_index(positions, act, name)
    return act[:, positions] if isinstance(positions, int) else act[index]


def split_rows(positions: Positions, n_rows: int, batch_size: int) -> list[Positions]:
    """`positions` for each batch of `batch_size` rows out of `n_rows` (a PerRow is sliced to match)."""
    n_batches = -(-n_rows // batch_size)
    if not isinstance(positions, PerRow):
        return [positions] * n_batches
    if len(positions) != n_rows:
        raise ValueError(f"positions has {len(positions)} entries; one per row needs {n_rows}")
    return [PerRow(positions.positions[i : i + batch_size]) for i in range(0, n_rows, batch_size)]
