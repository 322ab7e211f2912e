"""Wall time per phase of a study run (for the provenance footer) and the compute time of its stages
(for a profile that survives resuming)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class Phases:
    """Seconds spent in each named phase (a phase entered twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block under `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)


def compute_profile(stage_seconds: Iterable[dict[str, float | None]], group: Callable[[str], str]) -> dict[str, Any]:
    """Compute seconds summed by ``group(stage name)`` over several runs' :attr:`~.stages.Stages.seconds`
    (one dict per attack and seed), with the total and the number of stages
    whose time was not recorded (saved before stages were timed). A resumed study so reports what every
    stage cost when it was computed, not the seconds of the run that reused it."""
    groups: dict[str, float] = {}
    untimed = 0
    for seconds in stage_seconds:
        for name, value in seconds.items():
            if value is None:
                untimed += 1
            else:
                groups[group(name)] = round(groups.get(group(name), 0.0) + value, 1)
    return {"groups": groups, "total": round(sum(groups.values()), 1), "untimed_stages": untimed}
