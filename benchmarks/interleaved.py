"""Interleaved timing for the benchmarks: every route runs once as a warm-up, then each repetition runs
every route in turn, so drift on a shared machine slows them all alike; the median is reported with
the min and max beside it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def timed(routes: dict[str, Callable[[], Any]], repeats: int, synchronize: Callable[[], None] = lambda: None
          ) -> dict[str, dict[str, Any]]:
    """Per route: what its warm-up run returned (``result``), and the median, min and max seconds of
    `repeats` interleaved runs; `synchronize` waits for queued device work (CUDA) before a clock reads."""
    results = {name: fn() for name, fn in routes.items()}
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(repeats):
        for name, fn in routes.items():
            start = time.perf_counter()
            fn()
            synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: {"result": results[name], "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
            for name, t in times.items()}
