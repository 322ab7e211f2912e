"""The process's resident set, and its peak while a function runs: what the benchmarks report as CPU
memory, since torch's CPU allocations are invisible to tracemalloc. Each route is measured in a fresh
process whose allocator is set so that the resident set follows live memory (:data:`MEASURING_ALLOCATOR`)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

MEASURING_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}
"""glibc settings for the measuring process: every allocation above 64 KiB (every tensor that matters)
gets its own mapping, unmapped when freed, and the heap keeps no slack. Without them the peak depends on
what the caller's environment set: under a large trim threshold the allocator reuses memory freed during
setup (a warm-up, BAHA's head means), and SmolLM2 routes that need hundreds of MiB read about 1 MiB."""


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


def fresh_process_result(command: Sequence[str]) -> str:
    """The last line `command` prints, run in a fresh process with :data:`MEASURING_ALLOCATOR`."""
    done = subprocess.run(list(command), capture_output=True, text=True, check=True, env=os.environ | MEASURING_ALLOCATOR)
    return done.stdout.strip().splitlines()[-1]
