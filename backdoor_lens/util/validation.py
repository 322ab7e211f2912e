"""Argument checks that fail fast with an error naming the argument and what would be valid."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sized
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _preview(choices: Collection[Any], limit: int = 12) -> str:
    items = [repr(c) for c in list(choices)[:limit]]
    more = f", ... ({len(choices) - limit} more)" if len(choices) > limit else ""
    return ", ".join(items) + more


def check_choice(arg: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{arg}={value!r} is not valid; choose one of: {_preview(choices)}")


def check_nonempty(arg: str, value: Sized) -> None:
    """Raise ValueError if `value` has no elements."""
    if len(value) == 0:
        raise ValueError(f"{arg} is empty; it needs at least one element")


def check_range(arg: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise ValueError unless `value` is a finite number with low <= value <= high (bounds optional)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{arg}={value!r} is not a number; valid: [{low}, {high}]")
    if not math.isfinite(value):
        raise ValueError(f"{arg}={value!r} is not finite; valid: [{low}, {high}]")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{arg}={value!r} is out of range; valid: [{low}, {high}]")


def check_names(arg: str, value: Any) -> None:
    """Raise ValueError unless `value` is a list or tuple of strings (a bare string is
    refused: iterating it would yield its characters)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{arg}={value!r} must be a list or tuple of names, e.g. [{value!r}]" if isinstance(value, str)
                         else f"{arg} must be a list or tuple of names; got {type(value).__name__}")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{arg} holds {bad[0]!r}, which is not a name (a string)")


def check_finite(arg: str, tensor: torch.Tensor) -> None:
    """Raise ValueError if `tensor` holds NaN or infinite values."""
    if not tensor.isfinite().all():
        raise ValueError(f"{arg} contains NaN or infinite values")


def check_last_dim(arg: str, tensor: torch.Tensor, size: int) -> None:
    """Raise ValueError unless the last dimension of `tensor` is `size`."""
    if tensor.shape[-1] != size:
        raise ValueError(f"{arg} has shape {tuple(tensor.shape)}; its last dimension must be {size}")


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate: the system's available memory, capped by a
    cgroup limit where one applies; None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max", encoding="ascii").read().strip()
        used = open("/sys/fs/cgroup/memory.current", encoding="ascii").read().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits_in_memory(what: str, n_bytes: int) -> None:
    """Raise ValueError naming `what` and the estimate when `n_bytes` exceed the available memory
    (checked before allocating, so an absurd size fails at once instead of exhausting the machine)."""
    available = available_memory()
    if available is not None and n_bytes > available:
        raise ValueError(f"{what} needs about {n_bytes / 2**30:.3g} GiB of memory, more than the "
                         f"{available / 2**30:.3g} GiB available; refused before allocating anything")
