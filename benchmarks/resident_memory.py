"""The process's resident set, and its peak while a function runs: what the benchmarks report as CPU
memory, since torch's CPU allocations are invisible to tracemalloc."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable


def rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_during(fn: Callable[[], object]) -> int:
    """The largest resident set (bytes) while `fn` runs, sampled every millisecond."""
    peak, running = rss(), True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, rss())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        running = False
        thread.join()
    return max(peak, rss())
